"""Integration fixtures: a data root with two tiled slides in a real Dagster instance."""

from __future__ import annotations

import shutil

import dagster as dg
import pytest
from factory_helpers import resources_for

from assets.tiling import tile_grid, tissue_tiles
from pipelines.cli import get_instance, sync_slides


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


