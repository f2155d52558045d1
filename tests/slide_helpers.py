"""Helpers for tests that damage slides on purpose."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import tifffile


def corrupt_tile(path: Path, tile_index: int) -> None:
    """Destroy the JPEG data of one level-0 TIFF tile in place (its SOI marker and header)."""
    with tifffile.TiffFile(path) as tif:
        page = tif.pages[0]
        offset, count = page.dataoffsets[tile_index], page.databytecounts[tile_index]
    with open(path, "r+b") as f:
        f.seek(offset)
        f.write(np.zeros(min(count, 600), np.uint8).tobytes())
