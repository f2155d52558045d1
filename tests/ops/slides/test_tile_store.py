"""The tile store: direct chunk writes equal zarr's own, JPEG shards plain zarr reads, compaction, atomic swaps."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
from skimage import data

from ops.slides.jpeg_codec import decode_jpeg, encode_jpeg
from ops.slides.tile_store import (
    TileEncoding,
    TileWriter,
    compact,
    create_tile_array,
    open_tile_array,
    replace_dir,
    temp_dir_beside,
)

LOSSLESS = TileEncoding(codec="blosc")


def _psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return float(10 * np.log10(255**2 / mse)) if mse else float("inf")


def test_tile_writer_chunks_are_byte_identical_to_zarr(tmp_path):
    tile = data.immunohistochemistry()[:256, :256]
    ours, theirs = tmp_path / "ours.zarr", tmp_path / "theirs.zarr"
    create_tile_array(ours, 3, 256, LOSSLESS)
    create_tile_array(theirs, 3, 256, LOSSLESS)
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
    create_tile_array(store, 5, 16, LOSSLESS)
    writer = TileWriter(store)
    tiles = {s: np.full((16, 16, 3), s * 40, np.uint8) for s in (1, 3, 4)}
    for slot, tile in tiles.items():
        writer.write(slot, tile)
    arr = compact(store, np.array([1, 3, 4]))
    assert arr.shape == (3, 16, 16, 3)
    assert [int(arr[i][0, 0, 0]) for i in range(3)] == [40, 120, 160]


def test_jpeg_store_reads_back_through_plain_zarr(tmp_path):
    ihc = data.immunohistochemistry()
    tiles = [ihc[:256, :256], ihc[256:, 256:]]
    store = tmp_path / "t.zarr"
    create_tile_array(store, 2, 256, TileEncoding(quality=90, inner=128))
    writer = TileWriter(store)
    for i, tile in enumerate(tiles):
        writer.write(i, tile)
    # A fresh interpreter that imports nothing of this project: zarr finds the codec by its entry point.
    code = (
        "import sys, zarr, numpy as np; a = zarr.open_array(sys.argv[1], mode='r'); "
        "np.save(sys.argv[2], a[:]); print(a.shape, a.dtype)"
    )
    out = subprocess.run(
        [sys.executable, "-c", code, str(store / "tiles"), str(tmp_path / "read.npy")],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == "(2, 256, 256, 3) uint8"
    read = np.load(tmp_path / "read.npy")
    for tile, back in zip(tiles, read, strict=True):
        assert _psnr(tile, back) > 35, "quality 90 keeps the tile within JPEG noise of the original"
    np.testing.assert_array_equal(read, open_tile_array(store)[:])


def test_jpeg_copy_stores_streams_as_they_are(tmp_path):
    ihc = data.immunohistochemistry()[:256, :256]
    store = tmp_path / "t.zarr"
    create_tile_array(store, 1, 256, TileEncoding(inner=128))
    quads = [ihc[y : y + 128, x : x + 128] for y in (0, 128) for x in (0, 128)]
    streams = [encode_jpeg(np.ascontiguousarray(q), 75) for q in quads]
    TileWriter(store).copy(0, streams)
    chunk = (store / "tiles" / open_tile_array(store).metadata.encode_chunk_key((0, 0, 0, 0))).read_bytes()
    assert all(s in chunk for s in streams), "copied bytes are stored unchanged"
    parts = [decode_jpeg(s) for s in streams]
    whole = np.concatenate([np.concatenate(parts[:2], axis=1), np.concatenate(parts[2:], axis=1)], axis=0)
    np.testing.assert_array_equal(open_tile_array(store)[0], whole)
    with pytest.raises(ValueError, match="copy needs a JPEG store and 4 streams"):
        TileWriter(store).copy(0, streams[:3])


def test_bad_encoding_options_are_named():
    with pytest.raises(ValueError, match="tile codec must be 'jpeg' or 'blosc'"):
        TileEncoding(codec="png")
    with pytest.raises(ValueError, match="JPEG quality must be in 1..100"):
        TileEncoding(quality=0)


def test_replace_dir_swaps_atomically(tmp_path):
    final = tmp_path / "out"
    final.mkdir()
    (final / "old.txt").write_text("old")
    tmp = temp_dir_beside(final)
    (tmp / "new.txt").write_text("new")
    replace_dir(tmp, final)
    assert sorted(p.name for p in final.iterdir()) == ["new.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]
