"""Dagster resources: the only code that knows where bytes live (data root, stores) and how work is executed."""

from resources.compute import DaskResource
from resources.storage import FactoryStorage, default_home
from resources.torch_device import TorchDevice
from resources.tracking import MlflowTracking

__all__ = ["DaskResource", "FactoryStorage", "MlflowTracking", "TorchDevice", "default_home"]
