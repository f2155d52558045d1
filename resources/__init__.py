"""Dagster resources: the only code that knows where bytes live (data root, stores) and how work is executed."""

from resources.compute import DaskResource
from resources.storage import FactoryStorage, default_home

__all__ = ["DaskResource", "FactoryStorage", "default_home"]
