"""Annotation import: PNG and QuPath GeoJSON masks, every error path, set versioning and splits."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from ops.labelling.annotations import (
    CLASS_MAPS,
    IGNORE_INDEX,
    AnnotationError,
    annotation_set_version,
    get_class_map,
    load_geojson_mask,
    load_mask,
    load_png_mask,
    mask_to_geojson,
    match_annotations,
    qupath_color_rgb,
    save_geojson,
    save_png_mask,
    split_indices,
)

PAPER = CLASS_MAPS["paper"]
SHAPE = (40, 50)


def _mask() -> np.ndarray:
    m = np.zeros(SHAPE, np.uint8)
    m[5:30, 5:40] = 1
    m[10:20, 10:20] = 2  # glomerulus inside cortex
    m[32:38, 42:48] = 4
    return m


def _feature(name: str, rings: list, kind: str = "Polygon", colour: int | None = -65536) -> dict:
    cls = {"name": name} if colour is None else {"name": name, "colorRGB": colour}
    coords = rings if kind == "Polygon" else [rings]
    return {
        "type": "Feature",
        "geometry": {"type": kind, "coordinates": coords},
        "properties": {"objectType": "annotation", "classification": cls},
    }


def _rect(x0: float, y0: float, x1: float, y1: float) -> list[list[float]]:
    return [[x0, y0], [x1, y0], [x1, y1], [x0, y1], [x0, y0]]


# ---------------------------------------------------------------------------------------------------------------
# Good files.


def test_png_indexed_and_gray_round_trip(tmp_path) -> None:
    mask = _mask()
    path = save_png_mask(tmp_path / "img_0.png", mask, PAPER)
    with Image.open(path) as im:
        assert im.mode == "P" and im.getpalette()[3:6] == list(PAPER.colours[1])
    np.testing.assert_array_equal(load_png_mask(path, SHAPE, PAPER.n_classes), mask)
    gray = tmp_path / "gray.png"
    Image.fromarray(np.where(mask == 4, IGNORE_INDEX, mask).astype(np.uint8), mode="L").save(gray)
    loaded = load_png_mask(gray, SHAPE, PAPER.n_classes)
    assert (loaded == IGNORE_INDEX).sum() == (mask == 4).sum()
    rgb = tmp_path / "rgb.png"
    Image.fromarray(np.asarray(PAPER.colours, np.uint8)[mask]).save(rgb)
    np.testing.assert_array_equal(load_mask(rgb, SHAPE, PAPER), mask)  # RGB accepted when colours are known


def test_geojson_qupath_features(tmp_path) -> None:
    doc = {
        "type": "FeatureCollection",
        "features": [
            _feature("glomerulus", [_rect(10, 10, 20, 20)]),  # drawn first but smaller: must win over cortex
            _feature("cortical tubulointerstitium", [_rect(5, 5, 40, 30), _rect(30, 8, 35, 12)]),  # with a hole
            _feature("artery", [[_rect(42, 32, 48, 38)], [_rect(0, 36, 2, 40)]], kind="MultiPolygon", colour=None),
        ],
    }
    path = save_geojson(tmp_path / "img_0.geojson", doc)
    mask = load_geojson_mask(path, SHAPE, PAPER.classes)
    expected = _mask()
    expected[8:12, 30:35] = 0  # the hole
    expected[36:40, 0:2] = 4
    np.testing.assert_array_equal(mask, expected)
    in_file_order = load_geojson_mask(path, SHAPE, PAPER.classes, order="file")
    assert (in_file_order == 2).sum() == 0  # cortex painted over the glomerulus
    unannotated = load_geojson_mask(path, SHAPE, PAPER.classes, fill=IGNORE_INDEX)
    assert (unannotated == IGNORE_INDEX).sum() == (expected == 0).sum()
    # A bare list of Features (older QuPath exports) works the same way.
    (tmp_path / "list.geojson").write_text(json.dumps(doc["features"]))
    np.testing.assert_array_equal(load_geojson_mask(tmp_path / "list.geojson", SHAPE, PAPER.classes), mask)


def test_mask_to_geojson_round_trip(tmp_path) -> None:
    rng = np.random.default_rng(0)
    mask = _mask()
    mask[rng.random(SHAPE) < 0.03] = 3  # speckle: single pixels, diagonal neighbours, holes of one pixel
    doc = mask_to_geojson(mask, PAPER)
    names = {f["properties"]["classification"]["name"] for f in doc["features"]}
    assert names == set(PAPER.classes[1:])  # background (0) is not exported: importers fill it back in
    cls = doc["features"][0]["properties"]["classification"]
    assert cls["colorRGB"] == qupath_color_rgb(PAPER.colours[PAPER.index(cls["name"])])
    path = save_geojson(tmp_path / "a.geojson", doc)
    np.testing.assert_array_equal(load_geojson_mask(path, SHAPE, PAPER.classes), mask)


def test_qupath_colour_packing() -> None:
    assert qupath_color_rgb((255, 0, 0)) == -65536
    assert qupath_color_rgb((0, 0, 0)) == -16777216


# ---------------------------------------------------------------------------------------------------------------
# Bad files: each error names the file, the expectation and the fix.


def test_png_errors(tmp_path) -> None:
    small = save_png_mask(tmp_path / "small.png", np.zeros((20, 50), np.uint8), PAPER)
    with pytest.raises(AnnotationError, match=r"small\.png: mask is 20x50 \(HxW\), expected 40x50.*full resolution"):
        load_png_mask(small, SHAPE, 5)
    bad = tmp_path / "bad_ids.png"
    Image.fromarray(np.full(SHAPE, 7, np.uint8), mode="L").save(bad)
    with pytest.raises(AnnotationError, match=r"bad_ids\.png: class ids \[7\] not in the class map.*'artery'"):
        load_png_mask(bad, SHAPE, 5, class_names=PAPER.classes)
    empty = tmp_path / "empty.png"
    empty.write_bytes(b"")
    with pytest.raises(AnnotationError, match=r"empty\.png: file is empty"):
        load_png_mask(empty, SHAPE, 5)
    garbage = tmp_path / "garbage.png"
    garbage.write_bytes(b"not an image at all")
    with pytest.raises(AnnotationError, match=r"garbage\.png: not a readable PNG"):
        load_png_mask(garbage, SHAPE, 5)
    rgb = tmp_path / "rgb.png"
    Image.fromarray(np.zeros((*SHAPE, 3), np.uint8)).save(rgb)
    with pytest.raises(AnnotationError, match=r"PNG mode 'RGB' is not a class-id mask.*indexed PNG"):
        load_png_mask(rgb, SHAPE, 5)
    with pytest.raises(AnnotationError, match=r"colours outside the class map, e\.g\. \[\(0, 0, 0\)\]"):
        load_png_mask(rgb, SHAPE, 5, colours=PAPER.colours)
    with pytest.raises(AnnotationError, match="not found"):
        load_png_mask(tmp_path / "missing.png", SHAPE, 5)


def test_geojson_errors(tmp_path) -> None:
    def write(name: str, content: str) -> str:
        (tmp_path / name).write_text(content)
        return tmp_path / name

    with pytest.raises(AnnotationError, match=r"empty\.geojson: file is empty"):
        load_geojson_mask(write("empty.geojson", "  \n"), SHAPE, PAPER.classes)
    with pytest.raises(AnnotationError, match=r"broken\.geojson: not valid JSON .*line 1.*re-export from QuPath"):
        load_geojson_mask(write("broken.geojson", '{"type": "FeatureCollection", "feat'), SHAPE, PAPER.classes)
    with pytest.raises(AnnotationError, match=r"expected a GeoJSON FeatureCollection.*found 'Point'"):
        load_geojson_mask(write("point.geojson", '{"type": "Point"}'), SHAPE, PAPER.classes)
    typo = json.dumps([_feature("glomerulous", [_rect(1, 1, 5, 5)])])
    with pytest.raises(
        AnnotationError,
        match=r"feature 0: unknown class 'glomerulous' \(did you mean 'glomerulus'\?\)"
        r"; known classes: \['whitespace', ",
    ):
        load_geojson_mask(write("typo.geojson", typo), SHAPE, PAPER.classes)
    unclassified = json.dumps(
        [{"type": "Feature", "geometry": {"type": "Polygon", "coordinates": [_rect(1, 1, 5, 5)]}, "properties": {}}]
    )
    with pytest.raises(AnnotationError, match="no properties.classification.name.*assign a class"):
        load_geojson_mask(write("uncl.geojson", unclassified), SHAPE, PAPER.classes)
    line = json.dumps(
        [
            {
                "type": "Feature",
                "geometry": {"type": "LineString", "coordinates": [[0, 0], [3, 3]]},
                "properties": {"classification": {"name": "artery"}},
            }
        ]
    )
    with pytest.raises(AnnotationError, match="geometry 'LineString'; expected Polygon or MultiPolygon"):
        load_geojson_mask(write("line.geojson", line), SHAPE, PAPER.classes)
    big = json.dumps([_feature("artery", [_rect(10, 10, 100, 30)])])  # drawn on a 2x larger image
    with pytest.raises(
        AnnotationError,
        match=r"big\.geojson: feature 0 \('artery'\) spans x 10\.\.100.*outside the "
        r"40x50 \(HxW\) image",
    ):
        load_geojson_mask(write("big.geojson", big), SHAPE, PAPER.classes)
    with pytest.raises(AnnotationError, match=r"unsupported annotation file type '\.tif'"):
        load_mask(tmp_path / "a.tif", SHAPE, PAPER)


def test_annotation_for_unknown_image(tmp_path) -> None:
    ids = [f"img_{i:05d}" for i in range(4)]
    files = [tmp_path / "img_00001.png", tmp_path / "img_00003.geojson"]
    assert match_annotations(files, ids) == {"img_00001": files[0], "img_00003": files[1]}
    with pytest.raises(
        AnnotationError,
        match=r"img_00009\.png: annotates image 'img_00009', which is not among the "
        r"4 images \(img_00000, img_00001, img_00002, \.\.\.\)",
    ):
        match_annotations([*files, tmp_path / "img_00009.png"], ids)
    with pytest.raises(AnnotationError, match="already annotated by img_00001.geojson"):
        match_annotations([tmp_path / "img_00001.geojson", tmp_path / "img_00001.png"], ids)


def test_class_maps() -> None:
    assert PAPER.classes == ("whitespace", "cortical tubulointerstitium", "glomerulus", "arteriole", "artery")
    assert get_class_map("demo").n_classes == 6
    with pytest.raises(AnnotationError, match=r"unknown class map 'kidney'; known class maps: \['demo', 'paper'\]"):
        get_class_map("kidney")
    with pytest.raises(AnnotationError, match="unknown class 'tumour'"):
        PAPER.index("tumour")


# ---------------------------------------------------------------------------------------------------------------
# Versioning and splits.


def test_annotation_set_version(tmp_path) -> None:
    a, b = tmp_path / "a.png", tmp_path / "b.png"
    a.write_bytes(b"one")
    b.write_bytes(b"two")
    v1 = annotation_set_version([a, b])
    assert v1 == annotation_set_version([b, a]) and len(v1) == 16  # order-independent
    b.write_bytes(b"two!")
    assert annotation_set_version([a, b]) != v1  # content changes the version
    b.write_bytes(b"two")
    c = tmp_path / "c.png"
    b.rename(c)
    assert annotation_set_version([a, c]) != v1  # so does renaming (the file now annotates another image)


def test_split_indices() -> None:
    train, val, test = split_indices(40, 16, 4, 16, seed=1)
    assert (len(train), len(val), len(test)) == (16, 4, 16)
    assert len(set(train) | set(val) | set(test)) == 36
    np.testing.assert_array_equal(split_indices(40, 16, 4, 16, seed=1)[0], train)
    assert not np.array_equal(split_indices(40, 16, 4, 16, seed=2)[0], train)
    with pytest.raises(
        AnnotationError,
        match=r"split 16/4/16 \(train/val/test\) needs 36 annotated images, found 20"
        r"\. Fix: annotate 16 more",
    ):
        split_indices(20, 16, 4, 16)
    with pytest.raises(AnnotationError, match="n_val must be a non-negative integer"):
        split_indices(20, 4, -1, 2)
    with pytest.raises(AnnotationError, match="n_train must be >= 1"):
        split_indices(20, 0, 1, 2)
