"""Shared settings for integration tests: tiny configs and the resources pointed at a test data root."""

from __future__ import annotations

from pathlib import Path

from resources import DaskResource, FactoryStorage, MlflowTracking, TorchDevice

# A GAN run of 12 steps at batch 4 (seconds on CPU), from random weights.
TINY_GAN = {"kimg": 0.048, "batch_size": 4, "checkpoint_every": 3, "log_every": 1, "swd_images": 16,
            "from_scratch": True}


def resources_for(home: Path) -> dict:
    """The code location's resources, pointed at a test data root."""
    return {"storage": FactoryStorage(home=str(home)), "dask": DaskResource(),
            "torch_device": TorchDevice(threads=2), "mlflow_tracking": MlflowTracking()}
