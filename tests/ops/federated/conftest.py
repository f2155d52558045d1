"""Sites made of real IHC tissue (the image the demo slides are built from), each in its own data root."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from skimage import data

from ops.federated.runtime import Site
from ops.slides.tile_store import create_tile_array

TILE = 128


def write_site_store(root: Path, slide: str, tiles: np.ndarray) -> None:
    """A tile store as ``tissue_tiles`` writes it (``tiles.zarr`` + ``tiles.parquet``) under ``root/slide/tiles``."""
    folder = root / slide / "tiles"
    folder.mkdir(parents=True)
    arr = create_tile_array(folder / "tiles.zarr", len(tiles), tiles.shape[1])
    for i, tile in enumerate(tiles):
        arr[i] = tile
    table = {"tile_index": range(len(tiles)), "slide": slide, "slide_id": f"sl-{slide}", "mpp": 0.5, "x": 0, "y": 0}
    pd.DataFrame(table).to_parquet(folder / "tiles.parquet")


def ihc_tiles() -> np.ndarray:
    """32 tiles of 128 px: the 16 of the 512-px IHC image and their mirror images."""
    img = data.immunohistochemistry()
    tiles = np.stack([img[y : y + TILE, x : x + TILE] for y in range(0, 512, TILE) for x in range(0, 512, TILE)])
    return np.concatenate([tiles, tiles[:, :, ::-1]])


@pytest.fixture()
def three_sites(tmp_path: Path) -> list[Site]:
    """Three hospitals with 12, 10 and 10 tiles, each in a separate root (no shared parent with the server)."""
    tiles = ihc_tiles()
    sites = []
    for name, part in zip(("a", "b", "c"), np.split(np.random.default_rng(0).permutation(32), [12, 22]), strict=True):
        root = tmp_path / f"hospital_{name}"
        write_site_store(root, f"slide_{name}", tiles[np.sort(part)])
        sites.append(Site(name, root))
    return sites
