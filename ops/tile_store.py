"""Kept tiles in a zarr v3 array, one compressed chunk per tile, written so readers never see half a store.

Workers write tiles straight into a temporary array at their candidate index (no tile travels back to the caller,
so memory stays flat and a dask cluster can write in parallel). ``finalize`` then makes the array dense by renaming
chunk files (cheap: no re-encoding) and swaps the finished folder into place with ``os.replace``.
"""

from __future__ import annotations

import os
import shutil
import uuid
from pathlib import Path

import numpy as np
import zarr
from zarr.codecs import BloscCodec

TILES_ARRAY = "tiles"


def compressor(name: str = "lz4", level: int = 5) -> BloscCodec:
    """Blosc codec for RGB tiles: lz4 encodes ~1 GB/s so writing stays far cheaper than JPEG decoding."""
    return BloscCodec(cname=name, clevel=level, shuffle="noshuffle")


def create_tile_array(path: str | os.PathLike[str], n_slots: int, tile_size: int,
                      codec: BloscCodec | None = None) -> zarr.Array:
    """Create ``path`` (a zarr group) with a ``tiles`` array ``[n_slots, tile, tile, 3]`` uint8, chunk = one tile."""
    group = zarr.open_group(str(path), mode="w", zarr_format=3)
    return group.create_array(
        TILES_ARRAY,
        shape=(max(n_slots, 0), tile_size, tile_size, 3),
        chunks=(1, tile_size, tile_size, 3),
        dtype="uint8",
        compressors=codec or compressor(),
        fill_value=255,
        dimension_names=("tile", "y", "x", "channel"),
    )


def open_tile_array(path: str | os.PathLike[str], mode: str = "r") -> zarr.Array:
    """Open the ``tiles`` array of a tile store."""
    return zarr.open_array(str(Path(path) / TILES_ARRAY), mode=mode)


def compact(path: str | os.PathLike[str], kept_slots: np.ndarray) -> zarr.Array:
    """Renumber the written chunks ``kept_slots`` (ascending) to 0..n-1 and shrink the array to n tiles.

    Only valid on a store this process created with one chunk per tile along axis 0.
    """
    arr = open_tile_array(path, mode="r+")
    root = Path(path) / TILES_ARRAY
    kept_slots = np.asarray(kept_slots, dtype=np.int64)
    assert np.all(np.diff(kept_slots) > 0), "kept slots must be strictly ascending"
    for new, old in enumerate(kept_slots.tolist()):
        if new != old:
            src = root / arr.metadata.encode_chunk_key((old, 0, 0, 0))
            dst = root / arr.metadata.encode_chunk_key((new, 0, 0, 0))
            dst.parent.mkdir(parents=True, exist_ok=True)
            os.replace(src, dst)
    arr.resize((len(kept_slots), *arr.shape[1:]))
    return arr


def replace_dir(tmp: str | os.PathLike[str], final: str | os.PathLike[str]) -> None:
    """Move a finished folder into place; an older version is removed only after the new one is in place."""
    tmp, final = Path(tmp), Path(final)
    old = final.with_name(f".{final.name}.old-{uuid.uuid4().hex[:8]}")
    if final.exists():
        os.replace(final, old)
    os.replace(tmp, final)
    shutil.rmtree(old, ignore_errors=True)


def temp_dir_beside(final: str | os.PathLike[str]) -> Path:
    """A fresh hidden temp folder on the same file system as ``final`` (so the last rename is atomic)."""
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = final.with_name(f".{final.name}.tmp-{uuid.uuid4().hex[:8]}")
    tmp.mkdir()
    return tmp
