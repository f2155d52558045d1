"""Dagster code location ``pipelines`` (``dagster ... -m pipelines``) and the ``histofactory`` CLI."""

from pipelines.definitions import defs

__all__ = ["defs"]
