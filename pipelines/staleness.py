"""Which assets and partitions are stale: the one place in production code that calls Dagster internals.

Dagster 1.13 works out "stale" (an asset's code version, or an upstream data version, changed since it was
materialized) for its UI, but offers no public Python API for the answer: the UI gets it over GraphQL from a running
webserver, and automation conditions (``AutomationCondition.code_version_changed()`` ...) only act on it inside the
daemon. ``staleness`` wraps the internal resolver, and nothing else imports ``dagster._core``.
``tests/pipelines/test_staleness.py`` pins the Dagster minor version it was checked against and checks the answers
on a tiny graph, so an upgrade that moves or changes these internals fails there, loudly, not in a schedule tick.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal

import dagster as dg

Staleness = Literal["fresh", "stale", "missing"]
CHECKED_WITH_DAGSTER = "1.13"  # the minor version these internals were read in; the test fails on any other


def staleness(
    instance: dg.DagsterInstance, repository: dg.RepositoryDefinition
) -> Callable[[str, str | None], Staleness]:
    """``status(asset name, partition key or None)`` -> ``"fresh"``, ``"stale"`` or ``"missing"``.

    Answers are cached over one look at the instance: build a new one after materializing.
    """
    from dagster._core.definitions.data_version import CachingStaleStatusResolver
    from dagster._core.loader import LoadingContextForTest  # the plain LoadingContext; "ForTest" is only its name

    resolver = CachingStaleStatusResolver(instance, repository.asset_graph, LoadingContextForTest(instance))

    def status(asset: str, partition: str | None = None) -> Staleness:
        return resolver.get_status(dg.AssetKey(asset), partition).value.lower()

    return status
