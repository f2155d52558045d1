"""Integration fixtures: a data root with two tiled slides in a real Dagster instance."""

from __future__ import annotations

import shutil

import pytest
from factory_helpers import tile_every_slide


@pytest.fixture()
def tiled_home(factory_home, slide_a, slide_b):
    """Two tiled slides in a fresh data root and Dagster instance."""
    inbox = factory_home / "slides"
    inbox.mkdir()
    shutil.copy(slide_a, inbox / "case_a.svs")
    shutil.copy(slide_b, inbox / "case_b.svs")
    return factory_home, tile_every_slide(factory_home)
