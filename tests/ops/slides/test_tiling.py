"""Grid planning, per-tile QC, and tile extraction into zarr + parquet."""

from __future__ import annotations

import shutil

import numpy as np
import pandas as pd
import pytest
from scipy import ndimage
from skimage import data
from slide_helpers import corrupt_tile

import ops.slides.tiling as tiling
from ops.slides.demo_slides import DemoSlideSpec, write_demo_slide
from ops.slides.extraction import extract_tiles
from ops.slides.reader import SlideError, SlideReader, open_slide
from ops.slides.tile_store import open_tile_array
from ops.slides.tiling import ParallelSpec, TilingParams, plan_grid, tile_qc

SYNC = ParallelSpec(workers=1, scheduler="synchronous")


def test_grid_geometry_and_stride(slide_a):
    with open_slide(slide_a) as reader:
        plan = plan_grid(reader, TilingParams(tile_size=512))
        overlap = plan_grid(reader, TilingParams(tile_size=512, stride=256))
    assert len(plan.grid) == 36 and plan.read_level == 0 and plan.read_size == 512
    assert set(plan.grid["x"]) == set(range(0, 3072, 512))
    assert len(overlap.grid) == 11 * 11
    assert 0 < plan.grid["candidate"].sum() < len(plan.grid), "background grid tiles are not candidates"


def test_target_mpp_picks_level_and_resizes(slide_a):
    with open_slide(slide_a) as reader:
        at_2um = plan_grid(reader, TilingParams(tile_size=256, target_mpp=2.0))  # exactly level 1
        at_1um = plan_grid(reader, TilingParams(tile_size=256, target_mpp=1.0))  # between levels: read more, resize
        by_level = plan_grid(reader, TilingParams(tile_size=128, target_mpp=None, level=2))
        paper = plan_grid(reader, TilingParams(tile_size=4096))  # selectable, even if this slide is smaller
    assert (at_2um.read_level, at_2um.read_size, at_2um.tile_mpp) == (1, 256, 2.0)
    assert (at_1um.read_level, at_1um.read_size, at_1um.footprint) == (0, 512, 512)
    assert (by_level.read_level, by_level.tile_mpp) == (2, 8.0)
    assert len(paper.grid) == 0


def test_missing_mpp_is_a_clear_error(tmp_path):
    path = write_demo_slide(DemoSlideSpec("nompp", 1024, 1024, seed=3, mpp=None, levels=2), tmp_path)
    with open_slide(path) as reader, pytest.raises(SlideError, match=r"nompp\.svs.*no microns-per-pixel.*mpp_override"):
        plan_grid(reader, TilingParams())
    with open_slide(path, mpp_override=0.5) as reader:
        assert len(plan_grid(reader, TilingParams(tile_size=256)).grid) == 16


def test_tile_qc_flags():
    params = TilingParams()
    tissue = data.immunohistochemistry()
    white = np.full((512, 512, 3), 245, np.uint8)
    pen = tissue.copy()
    pen[:, :100] = (40, 140, 70)
    blurred = np.stack([ndimage.uniform_filter(tissue[..., c], 25) for c in range(3)], -1)
    assert tile_qc(white, params)["whitespace_fraction"] == 1.0
    assert tile_qc(tissue, params)["whitespace_fraction"] < 0.3
    assert tile_qc(pen, params)["pen_fraction"] > 0.15 > tile_qc(tissue, params)["pen_fraction"]
    assert tile_qc(blurred, params)["blur"] < params.blur_threshold < tile_qc(tissue, params)["blur"]
    assert tiling._decide(tile_qc(pen, params), params) == "pen"
    assert tiling._decide(tile_qc(blurred, params), params) == "blurry"
    assert tiling._decide(tile_qc(white, params), params) == "whitespace"
    assert tiling._decide(tile_qc(tissue, params), params) == "kept"


def test_extract_writes_dense_store_and_table(tmp_path, slide_a):
    params = TilingParams()
    with open_slide(slide_a) as reader:
        plan = plan_grid(reader, params)
    res = extract_tiles(str(slide_a), plan, params, ParallelSpec(workers=2), tmp_path / "out", "case_a", "sl-x")
    arr = open_tile_array(tmp_path / "out" / "tiles.zarr")
    table = pd.read_parquet(tmp_path / "out" / "tiles.parquet")
    assert arr.shape == (len(table), 512, 512, 3) and arr.shards == (1, 512, 512, 3)  # one file per tile
    assert arr.metadata.zarr_format == 3
    assert len(table) == res.counts["kept"] > 5
    assert list(table["tile_index"]) == list(range(len(table)))
    assert (table["tissue_fraction"] >= 0.5).all() and (table["mpp"] == 0.5).all()
    assert set(table.columns) >= {"slide", "slide_id", "level", "x", "y", "mpp", "tissue_fraction"}
    # Stored tiles are the slide's pixels at the recorded coordinates.
    with open_slide(slide_a, decoder="openslide") as reader:
        for i in (0, len(table) - 1):
            row = table.iloc[i]
            expect = reader.read_region(int(row.x), int(row.y), 0, 512, 512)
            assert np.abs(arr[i].astype(int) - expect).max() <= 2
    assert sum(res.counts[s] for s in ("kept", "whitespace", "pen", "blurry", "corrupt")) == len(res.candidates)
    assert res.counts["not_candidate"] + len(res.candidates) == res.counts["grid"] == 36
    assert res.thumbnail_png.startswith(b"\x89PNG")


def test_aligned_tiles_are_the_slides_own_jpeg_bytes(tmp_path, slide_a):
    """Byte passthrough: a 512-px tile on the slide's 256-px JPEG grid is stored as the slide's four streams."""
    import tifffile

    params = TilingParams()
    with open_slide(slide_a) as reader:
        plan = plan_grid(reader, params)
    res = extract_tiles(str(slide_a), plan, params, SYNC, tmp_path / "out", "case_a", "sl-x")
    assert res.counts["copied"] == res.counts["kept"] > 5 and res.encoding.startswith("jpeg")
    arr = open_tile_array(tmp_path / "out" / "tiles.zarr")
    with tifffile.TiffFile(slide_a) as tif:
        page = tif.pages[0]
        row = res.table.iloc[0]
        index = (int(row.y) // 256) * (3072 // 256) + int(row.x) // 256
        with open(slide_a, "rb") as f:
            f.seek(page.dataoffsets[index])
            raw = f.read(page.databytecounts[index])
    shard = (tmp_path / "out" / "tiles.zarr" / "tiles" / arr.metadata.encode_chunk_key((0, 0, 0, 0))).read_bytes()
    assert raw[2:] in shard, "the slide's entropy-coded tile is stored byte for byte"
    with open_slide(slide_a, decoder="tifffile") as reader:
        for i, row in res.table.iterrows():
            np.testing.assert_array_equal(arr[i], reader.read_region(int(row.x), int(row.y), 0, 512, 512))
    assert res.store_ratio < 1.0 and res.store_bytes > 0


def test_reencoded_jpeg_tiles_stay_close_to_lossless(tmp_path, slide_a):
    """Tiles that must be resized cannot be copied; at the default quality they stay within JPEG noise."""
    stores = {}
    for codec in ("jpeg", "blosc"):
        params = TilingParams(target_mpp=0.75, tile_codec=codec)  # between levels: read 768 px, resize to 512
        with open_slide(slide_a) as reader:
            plan = plan_grid(reader, params)
        res = extract_tiles(str(slide_a), plan, params, SYNC, tmp_path / codec, "a", "sl-a")
        stores[codec] = (open_tile_array(tmp_path / codec / "tiles.zarr")[:], res)
    (jpeg, rj), (lossless, rl) = stores["jpeg"], stores["blosc"]
    assert rj.counts["copied"] == 0 and jpeg.shape == lossless.shape and len(jpeg) > 0
    mse = np.mean((jpeg.astype(np.float64) - lossless.astype(np.float64)) ** 2)
    assert 10 * np.log10(255**2 / mse) > 35
    assert rj.store_bytes < rl.store_bytes / 3


def test_background_is_never_decoded(tmp_path, slide_a, monkeypatch):
    reads: list[tuple[int, int, int]] = []
    original, streams = SlideReader.read_region, SlideReader.jpeg_streams

    def counting(self, x, y, level, width, height):
        reads.append((x, y, level))
        return original(self, x, y, level, width, height)

    def counting_streams(self, x, y, level, size):
        reads.append((x, y, level))
        return streams(self, x, y, level, size)

    params = TilingParams()
    with open_slide(slide_a) as reader:
        plan = plan_grid(reader, params)
    assert all(level > 0 for _, _, level in reads), "planning reads only low-resolution levels"
    monkeypatch.setattr(SlideReader, "read_region", counting)
    monkeypatch.setattr(SlideReader, "jpeg_streams", counting_streams)
    extract_tiles(str(slide_a), plan, params, SYNC, tmp_path / "out", "case_a", "sl-x")
    level0 = {(x, y) for x, y, level in reads if level == 0}
    candidates = set(zip(plan.grid.loc[plan.grid.candidate, "x"], plan.grid.loc[plan.grid.candidate, "y"], strict=True))
    assert level0 == candidates and len(level0) < len(plan.grid)


@pytest.mark.parametrize("decoder", ["tifffile", "openslide"])
def test_corrupt_tile_is_skipped_and_counted(tmp_path, slide_a, decoder):
    path = tmp_path / "damaged.svs"
    shutil.copy(slide_a, path)
    params = TilingParams(decoder=decoder)
    with open_slide(path) as reader:
        plan = plan_grid(reader, params)
    kept_before = extract_tiles(str(path), plan, params, SYNC, tmp_path / "ok", "d", "sl-d").table
    row = kept_before.iloc[len(kept_before) // 2]
    corrupt_tile(path, tile_index=(int(row.y) // 256) * (3072 // 256) + int(row.x) // 256)
    res = extract_tiles(str(path), plan, params, SYNC, tmp_path / "bad", "d", "sl-d")
    assert res.counts["corrupt"] == 1
    assert res.counts["kept"] == len(kept_before) - 1
    bad = res.candidates[res.candidates.status == "corrupt"].iloc[0]
    assert (bad.x, bad.y) == (row.x, row.y) and bad.error


def test_decoders_and_schedulers_keep_the_same_tiles(tmp_path, slide_b):
    kept = {}
    for name, decoder, par in [
        ("ts", "tifffile", ParallelSpec(workers=2, scheduler="threads")),
        ("op", "openslide", ParallelSpec(workers=2, scheduler="processes")),
    ]:
        params = TilingParams(decoder=decoder)
        with open_slide(slide_b) as reader:
            plan = plan_grid(reader, params)
        table = extract_tiles(str(slide_b), plan, params, par, tmp_path / name, "b", "sl-b").table
        kept[name] = set(zip(table.x, table.y, strict=True))
    assert kept["ts"] == kept["op"] and len(kept["ts"]) > 3


def test_failed_run_keeps_previous_output(tmp_path, slide_a, monkeypatch):
    params = TilingParams()
    with open_slide(slide_a) as reader:
        plan = plan_grid(reader, params)
    out = tmp_path / "out"
    first = extract_tiles(str(slide_a), plan, params, SYNC, out, "a", "sl-a")
    before = (out / "tiles.parquet").read_bytes()
    calls = {"n": 0}
    original = tiling.tile_qc

    def boom(tile, p):
        calls["n"] += 1
        if calls["n"] > 3:
            raise RuntimeError("worker died")
        return original(tile, p)

    monkeypatch.setattr(tiling, "tile_qc", boom)
    with pytest.raises(RuntimeError, match="worker died"):
        extract_tiles(str(slide_a), plan, params, SYNC, out, "a", "sl-a")
    assert (out / "tiles.parquet").read_bytes() == before
    assert open_tile_array(out / "tiles.zarr").shape[0] == first.counts["kept"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"], "no temp folder left behind"
    monkeypatch.setattr(tiling, "tile_qc", original)
    again = extract_tiles(str(slide_a), plan, params, SYNC, out, "a", "sl-a")
    pd.testing.assert_frame_equal(again.table, first.table)  # idempotent


def test_all_background_slide_gives_empty_result(tmp_path):
    path = write_demo_slide(DemoSlideSpec("blank", 2048, 2048, seed=9, tissue_share=0, pen_marks=0), tmp_path)
    params = TilingParams()
    with open_slide(path) as reader:
        plan = plan_grid(reader, params)
    assert plan.grid["candidate"].sum() == 0
    res = extract_tiles(str(path), plan, params, SYNC, tmp_path / "out", "blank", "sl-b")
    assert res.counts["kept"] == 0 and len(res.table) == 0
    assert open_tile_array(tmp_path / "out" / "tiles.zarr").shape == (0, 512, 512, 3)


def test_dask_local_cluster_keeps_the_same_tiles(tmp_path, slide_a):
    from distributed import LocalCluster

    params = TilingParams()
    with open_slide(slide_a) as reader:
        plan = plan_grid(reader, params)
    local = extract_tiles(str(slide_a), plan, params, ParallelSpec(workers=2), tmp_path / "local", "a", "sl-a")
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None) as cluster:
        spec = ParallelSpec(workers=2, address=cluster.scheduler_address)
        remote = extract_tiles(str(slide_a), plan, params, spec, tmp_path / "cluster", "a", "sl-a")
    pd.testing.assert_frame_equal(local.table, remote.table)
    np.testing.assert_array_equal(
        open_tile_array(tmp_path / "local" / "tiles.zarr")[:], open_tile_array(tmp_path / "cluster" / "tiles.zarr")[:]
    )
