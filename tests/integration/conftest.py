"""Integration fixtures: a data root with two tiled slides in a real Dagster instance."""

from __future__ import annotations

import shutil
from pathlib import Path

import dagster as dg
import pytest

from assets.tiling import tile_grid, tissue_tiles
from pipelines.cli import get_instance, sync_slides
from resources import DaskResource, FactoryStorage, MlflowTracking, TorchDevice

# A GAN run of 12 steps at batch 4 (seconds on CPU), from random weights.
TINY_GAN = {"kimg": 0.048, "batch_size": 4, "checkpoint_every": 3, "log_every": 1, "swd_images": 16,
            "from_scratch": True}


def resources_for(home: Path) -> dict:
    """The code location's resources, pointed at a test data root."""
    return {"storage": FactoryStorage(home=str(home)), "dask": DaskResource(),
            "torch_device": TorchDevice(threads=2), "mlflow_tracking": MlflowTracking()}


@pytest.fixture()
def tiled_home(factory_home, slide_a, slide_b):
    """Two tiled slides in a fresh data root and Dagster instance."""
    inbox = factory_home / "slides"
    inbox.mkdir()
    shutil.copy(slide_a, inbox / "case_a.svs")
    shutil.copy(slide_b, inbox / "case_b.svs")
    instance = get_instance()
    for key in sync_slides(instance):
        assert dg.materialize([tile_grid, tissue_tiles], partition_key=key, instance=instance,
                              resources=resources_for(factory_home)).success
    return factory_home, instance


