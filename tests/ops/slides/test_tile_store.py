"""The tile store: direct chunk writes equal zarr's own, compaction, atomic folder replacement."""

from __future__ import annotations

import numpy as np
import pytest
from skimage import data

from ops.slides.tile_store import TileWriter, compact, create_tile_array, open_tile_array, replace_dir, temp_dir_beside


def test_tile_writer_chunks_are_byte_identical_to_zarr(tmp_path):
    tile = data.immunohistochemistry()[:256, :256]
    ours, theirs = tmp_path / "ours.zarr", tmp_path / "theirs.zarr"
    create_tile_array(ours, 3, 256)
    create_tile_array(theirs, 3, 256)
    TileWriter(ours).write(1, tile)
    open_tile_array(theirs, mode="r+")[1] = tile
    key = open_tile_array(ours).metadata.encode_chunk_key((1, 0, 0, 0))
    assert (ours / "tiles" / key).read_bytes() == (theirs / "tiles" / key).read_bytes()
    np.testing.assert_array_equal(open_tile_array(ours)[1], tile)
    assert not [p for p in (ours / "tiles").rglob(".*")], "no temp files left"


def test_tile_writer_rejects_foreign_arrays(tmp_path):
    import zarr

    zarr.open_group(str(tmp_path / "g.zarr"), mode="w").create_array(
        "tiles", shape=(2, 8, 8, 3), chunks=(2, 8, 8, 3), dtype="uint8"
    )
    with pytest.raises(ValueError, match="needs a tile store made by create_tile_array"):
        TileWriter(tmp_path / "g.zarr")


def test_compact_renumbers_kept_slots(tmp_path):
    store = tmp_path / "t.zarr"
    create_tile_array(store, 5, 16)
    writer = TileWriter(store)
    tiles = {s: np.full((16, 16, 3), s * 40, np.uint8) for s in (1, 3, 4)}
    for slot, tile in tiles.items():
        writer.write(slot, tile)
    arr = compact(store, np.array([1, 3, 4]))
    assert arr.shape == (3, 16, 16, 3)
    assert [int(arr[i][0, 0, 0]) for i in range(3)] == [40, 120, 160]


def test_replace_dir_swaps_atomically(tmp_path):
    final = tmp_path / "out"
    final.mkdir()
    (final / "old.txt").write_text("old")
    tmp = temp_dir_beside(final)
    (tmp / "new.txt").write_text("new")
    replace_dir(tmp, final)
    assert sorted(p.name for p in final.iterdir()) == ["new.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]
