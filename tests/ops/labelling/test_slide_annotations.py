"""Slide-level QuPath annotations: parsing, cutting onto tiles, the demo writer, mask stores and the pair sampler."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from skimage import data

from ops.labelling.class_maps import CLASS_MAPS, IGNORE_INDEX, AnnotationError
from ops.labelling.demo_annotator import DemoAnnotatorConfig, demo_annotate
from ops.labelling.geojson import load_geojson_mask, save_geojson
from ops.labelling.slide_annotations import (
    labelled_fraction,
    labelled_tiles,
    load_slide_annotations,
    open_mask_array,
    rasterize_onto_tiles,
    tile_downsamples,
    write_demo_slide_annotations,
    write_mask_store,
)
from ops.slides.crops import PairCropSampler
from ops.slides.tile_store import TileEncoding, TileWriter, create_tile_array

PAPER = CLASS_MAPS["paper"]
DEMO = CLASS_MAPS["demo"]
SLIDE = (192, 128)  # level-0 (W, H)
TILE = 64


def _feature(name: str, rings: list, kind: str = "Polygon") -> dict:
    return {
        "type": "Feature",
        "geometry": {"type": kind, "coordinates": rings},
        "properties": {"objectType": "annotation", "classification": {"name": name}},
    }


def _rect(x0: float, y0: float, x1: float, y1: float) -> list[list[float]]:
    return [[x0, y0], [x1, y0], [x1, y1], [x0, y1], [x0, y0]]


def _slide_doc() -> dict:
    """Shapes at known level-0 coordinates, several across tile borders (x = 64, 128; y = 64)."""
    return {
        "type": "FeatureCollection",
        "features": [
            _feature("artery", [_rect(20, 20, 30, 30)]),  # drawn before the cortex it lies in: wins only by area order
            _feature("cortical tubulointerstitium", [_rect(10, 8, 150, 120), _rect(40, 30, 90, 80)]),  # with a hole
            _feature("glomerulus", [_rect(50, 40, 80, 70)]),  # inside the hole: painted after (smaller)
            _feature("arteriole", [_rect(100.3, 50.7, 140.6, 77.2)]),  # fractional, crosses x=128 and y=64
            _feature("artery", [[[160, 10], [188, 60], [150, 120.5], [170, 62], [160, 10]]]),  # concave, last column
            _feature("whitespace", [_rect(2, 90, 20, 126)]),  # over the cortex's edge: later and smaller, wins
        ],
    }


def _grid(tile: int = TILE, ds: float | None = None, skip: tuple[int, ...] = (4,)) -> pd.DataFrame:
    """Tile rows over the slide; ``skip`` drops positions like tiling drops whitespace."""
    side = tile * (ds or 1)
    xs, ys = np.meshgrid(np.arange(0, SLIDE[0], side), np.arange(0, SLIDE[1], side))
    df = pd.DataFrame(
        {
            "x": xs.ravel().astype(np.int64),
            "y": ys.ravel().astype(np.int64),
            "tile_size": tile,
            "level": 0 if ds is None else 1,
        }
    )
    df = df.drop(index=[i for i in skip if i < len(df)]).reset_index(drop=True)
    return df if ds is None else df.assign(downsample=float(ds))


def _scaled(doc: dict, factor: float) -> dict:
    out = json.loads(json.dumps(doc))
    for f in out["features"]:
        f["geometry"]["coordinates"] = (np.asarray(f["geometry"]["coordinates"]) * factor).tolist()
    return out


def _cut(full: np.ndarray, rows: pd.DataFrame, size: int, factor: float) -> np.ndarray:
    return np.stack(
        [
            full[int(y * factor) : int(y * factor) + size, int(x * factor) : int(x * factor) + size]
            for x, y in zip(rows["x"], rows["y"], strict=True)
        ]
    )


# ---------------------------------------------------------------------------------------------------------------
# Round trips against a full-slide mask painted directly.


def test_tiles_match_full_slide_mask(tmp_path) -> None:
    path = save_geojson(tmp_path / "slide.geojson", _slide_doc())
    polys = load_slide_annotations(path, PAPER.classes, slide_size=SLIDE)
    assert [p.class_id for p in polys] == [4, 1, 2, 3, 4, 0] and len(polys[1].rings) == 2
    assert polys[3].bbox == (100.3, 50.7, 140.6, 77.2)
    full = load_geojson_mask(path, SLIDE[::-1], PAPER.classes, fill=IGNORE_INDEX)
    tiles = _grid()
    masks = rasterize_onto_tiles(polys, tiles)
    assert masks.shape == (len(tiles), TILE, TILE) and masks.dtype == np.uint8
    np.testing.assert_array_equal(masks, _cut(full, tiles, TILE, 1.0))
    assert {1, 2, 3, 4, 0, IGNORE_INDEX} <= set(np.unique(masks).tolist())
    assert (masks[0, 20:30, 20:30] == 4).all()
    in_file_order = rasterize_onto_tiles(polys, tiles, order="file")  # the cortex drawn later covers the artery
    assert (in_file_order[0, 20:30, 20:30] == 1).all()
    full_file = load_geojson_mask(path, SLIDE[::-1], PAPER.classes, fill=IGNORE_INDEX, order="file")
    np.testing.assert_array_equal(in_file_order, _cut(full_file, tiles, TILE, 1.0))
    assert (rasterize_onto_tiles(polys, tiles, fill=0) == np.where(masks == IGNORE_INDEX, 0, masks)).all()


def test_downsampled_output_and_level_with_downsample_2(tmp_path) -> None:
    doc = _slide_doc()
    polys = load_slide_annotations(save_geojson(tmp_path / "slide.geojson", doc), PAPER.classes)
    half = save_geojson(tmp_path / "half.geojson", _scaled(doc, 0.5))
    full_half = load_geojson_mask(half, (SLIDE[1] // 2, SLIDE[0] // 2), PAPER.classes, fill=IGNORE_INDEX)
    tiles = _grid()
    small = rasterize_onto_tiles(polys, tiles, out_size=TILE // 2)  # 64-px tiles sampled to 32 px
    np.testing.assert_array_equal(small, _cut(full_half, tiles, TILE // 2, 0.5))
    level1 = _grid(tile=TILE // 2, ds=2, skip=())  # 32-px tiles read at downsample 2 cover 64 level-0 px
    np.testing.assert_array_equal(tile_downsamples(level1), 2.0)
    np.testing.assert_array_equal(rasterize_onto_tiles(polys, level1), _cut(full_half, level1, TILE // 2, 0.5))


def test_many_polygons_many_tiles(tmp_path) -> None:
    """Thousands of polygons on a slide: the bbox prefilter keeps it quick, and the result stays exact."""
    rng = np.random.default_rng(0)
    xy = rng.uniform(0, [SLIDE[0] - 6, SLIDE[1] - 6], size=(3000, 2))
    wh = rng.uniform(0.5, 6, size=(3000, 2))
    feats = [
        _feature(PAPER.classes[k % 5], [_rect(x, y, x + w, y + h)])
        for k, ((x, y), (w, h)) in enumerate(zip(xy, wh, strict=True))
    ]
    path = save_geojson(tmp_path / "many.geojson", {"type": "FeatureCollection", "features": feats})
    tiles = _grid(tile=16, skip=())
    masks = rasterize_onto_tiles(load_slide_annotations(path, PAPER.classes, SLIDE), tiles)
    full = load_geojson_mask(path, SLIDE[::-1], PAPER.classes, fill=IGNORE_INDEX)
    np.testing.assert_array_equal(masks, _cut(full, tiles, 16, 1.0))


def test_tile_table_geometry_errors() -> None:
    with pytest.raises(ValueError, match="no 'downsample' column"):
        tile_downsamples(_grid().assign(level=1))
    with pytest.raises(ValueError, match="several sizes"):
        rasterize_onto_tiles([], _grid().assign(tile_size=[64, 32, 64, 64, 64]))
    with pytest.raises(ValueError, match="order must be"):
        rasterize_onto_tiles([], _grid(), order="size")


# ---------------------------------------------------------------------------------------------------------------
# Error paths.


def test_slide_annotation_errors(tmp_path) -> None:
    def write(name: str, doc: dict | str) -> Path:
        (tmp_path / name).write_text(doc if isinstance(doc, str) else json.dumps(doc))
        return tmp_path / name

    with pytest.raises(AnnotationError, match=r"typo\.geojson: feature 0: unknown class 'glomerulis' \(did you mean"):
        load_slide_annotations(write("typo.geojson", _feature("glomerulis", [_rect(1, 1, 5, 5)])), PAPER.classes)
    outside = _feature("glomerulus", [_rect(1, 1, 400, 5)])
    with pytest.raises(
        AnnotationError,
        match=r"far\.geojson: .*outside the 192x128 \(WxH\) level-0 slide: drawn on "
        r"another slide or at another resolution\. Fix",
    ):
        load_slide_annotations(write("far.geojson", outside), PAPER.classes, slide_size=SLIDE)
    assert len(load_slide_annotations(tmp_path / "far.geojson", PAPER.classes)) == 1  # no size, no check
    line = _feature("artery", [[0, 0], [5, 5]], kind="LineString")
    with pytest.raises(AnnotationError, match=r"line\.geojson: feature 0 has geometry 'LineString'; expected Polygon"):
        load_slide_annotations(write("line.geojson", line), PAPER.classes)
    with pytest.raises(AnnotationError, match=r"broken\.geojson: not valid JSON"):
        load_slide_annotations(write("broken.geojson", '{"type": "FeatureColl'), PAPER.classes)
    with pytest.raises(AnnotationError, match="expected a GeoJSON FeatureCollection"):
        load_slide_annotations(write("point.geojson", {"type": "Point"}), PAPER.classes)


# ---------------------------------------------------------------------------------------------------------------
# Tile stores for the demo writer and the sampler.


def _tile_store(path: Path, tiles: np.ndarray) -> Path:
    # Lossless, so pixel-exact alignment checks hold (the default JPEG store is within JPEG noise only).
    create_tile_array(path, len(tiles), tiles.shape[1], TileEncoding(codec="blosc"))
    writer = TileWriter(path)
    for i, t in enumerate(tiles):
        writer.write(i, t)
    return path


def _ihc_slide(tmp_path: Path, ds: float) -> pd.DataFrame:
    """The 512-px IHC image as four 256-px tiles of a slide whose level-0 pixels are ``ds`` times smaller."""
    ihc = data.immunohistochemistry()
    quads = [(0, 0), (256, 0), (0, 256), (256, 256)]
    store = _tile_store(tmp_path / "tiles.zarr", np.stack([ihc[y : y + 256, x : x + 256] for x, y in quads]))
    return pd.DataFrame(
        {
            "tile_index": range(4),
            "slide": "demo_01",
            "level": 0,
            "x": [int(x * ds) for x, _ in quads],
            "y": [int(y * ds) for _, y in quads],
            "tile_size": 256,
            "mpp": np.float32(0.5),
            "store": str(store),
            "downsample": float(ds),
        }
    )


@pytest.mark.parametrize("ds", [1.0, 2.0])
def test_demo_writer_round_trip(tmp_path, ds: float) -> None:
    tiles = _ihc_slide(tmp_path, ds)
    path = write_demo_slide_annotations(tiles, tmp_path / "demo_01.geojson", DEMO, n_tiles=3, seed=1)
    doc = json.loads(path.read_text())
    assert doc["type"] == "FeatureCollection" and len({f["id"] for f in doc["features"]}) == len(doc["features"])
    polys = load_slide_annotations(path, DEMO.classes, slide_size=(int(512 * ds), int(512 * ds)))
    masks = rasterize_onto_tiles(polys, tiles)
    frac = labelled_fraction(masks)
    annotated = np.flatnonzero(frac > 0)
    assert len(annotated) == 3 and (frac[annotated] > 0.999).all() and (frac == 0).sum() == 1
    ihc = data.immunohistochemistry()
    for i in annotated:
        x, y = int(tiles["x"][i] / ds), int(tiles["y"][i] / ds)
        expected = demo_annotate(ihc[y : y + 256, x : x + 256], DemoAnnotatorConfig(mpp=0.5))
        assert (masks[i] == expected).mean() > 0.97, f"tile {i}"
    table, kept = labelled_tiles(masks, tiles, min_labelled=0.5, mask_store="m.zarr")
    assert len(table) == 3 and kept.shape == (3, 256, 256) and table["mask_index"].tolist() == [0, 1, 2]
    assert table["mask_store"].eq("m.zarr").all() and (table["labelled_fraction"] > 0.999).all()
    again = write_demo_slide_annotations(tiles, tmp_path / "again.geojson", DEMO, n_tiles=3, seed=1)
    assert again.read_text() == path.read_text()  # seeded


def test_demo_writer_needs_demo_class_map(tmp_path) -> None:
    tiles = pd.DataFrame({"tile_index": [0], "x": [0], "y": [0], "tile_size": [8], "level": [0], "store": ["s"]})
    with pytest.raises(ValueError, match="demo annotator draws the classes"):
        write_demo_slide_annotations(tiles, tmp_path / "a.geojson", PAPER, n_tiles=1)


def test_mask_store_round_trip(tmp_path) -> None:
    masks = np.random.default_rng(0).integers(0, 6, size=(3, 16, 16), dtype=np.uint8)
    write_mask_store(tmp_path / "m.zarr", masks, {"class_map": "demo"})
    write_mask_store(tmp_path / "m.zarr", masks)  # replacing an existing store works
    arr = open_mask_array(tmp_path / "m.zarr")
    assert arr.chunks == (1, 16, 16)
    np.testing.assert_array_equal(arr[:], masks)
    with pytest.raises(ValueError, match=r"expected uint8 masks \[N, S, S\]"):
        write_mask_store(tmp_path / "bad.zarr", masks.astype(np.int32))
    with pytest.raises(FileNotFoundError, match="no mask store here"):
        open_mask_array(tmp_path / "missing.zarr")


def _pairs(tmp_path: Path, mask_size: int = 32) -> pd.DataFrame:
    images = np.random.default_rng(0).integers(0, 256, size=(3, 32, 32, 3), dtype=np.uint8)
    store = _tile_store(tmp_path / "tiles.zarr", images)
    masks = images[..., 0] // 64  # mask is a function of the image: alignment is checkable per pixel
    mask_store = write_mask_store(
        tmp_path / f"masks{mask_size}.zarr", np.ascontiguousarray(masks[:, :mask_size, :mask_size])
    )
    return pd.DataFrame(
        {"store": str(store), "tile_index": [2, 0, 1], "mask_store": str(mask_store), "mask_index": [2, 0, 1]}
    )


@pytest.mark.parametrize("augment", [False, True])
def test_pair_sampler_alignment_and_determinism(tmp_path, augment: bool) -> None:
    pairs = _pairs(tmp_path)
    images, masks = PairCropSampler(pairs, 12, seed=3, crops_per_tile=2, augment=augment).batch_uint8(10)
    assert images.shape == (10, 12, 12, 3) and images.dtype == np.uint8
    assert masks.shape == (10, 12, 12) and masks.dtype == np.uint8
    np.testing.assert_array_equal(masks, images[..., 0] // 64)
    again = PairCropSampler(pairs, 12, seed=3, crops_per_tile=2, augment=augment).batch_uint8(10)
    np.testing.assert_array_equal(again[0], images)
    other = PairCropSampler(pairs, 12, seed=4, crops_per_tile=2, augment=augment).batch_uint8(10)
    assert not np.array_equal(other[0], images)
    x, y = PairCropSampler(pairs, 12, seed=3, crops_per_tile=2, augment=augment).batch(10)
    assert x.shape == (10, 3, 12, 12) and x.dtype == torch.float32 and x.min() >= -1 and x.max() <= 1
    assert y.shape == (10, 12, 12) and y.dtype == torch.long
    np.testing.assert_array_equal(y.numpy(), masks)


def test_pair_sampler_rejects_mismatched_stores(tmp_path) -> None:
    pairs = _pairs(tmp_path, mask_size=16)
    with pytest.raises(
        ValueError,
        match=r"tile store .*tiles\.zarr holds 32x32 tiles but mask store .*masks16\.zarr "
        r"holds 16x16 masks",
    ):
        PairCropSampler(pairs, 8)
    with pytest.raises(ValueError, match=r"lacks columns \['mask_store', 'mask_index'\]"):
        PairCropSampler(pairs[["store", "tile_index"]], 8)
