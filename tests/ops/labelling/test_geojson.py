"""QuPath GeoJSON: features with holes and nesting, mask round trips, colour packing, every error path."""

from __future__ import annotations

import json

import numpy as np
import pytest
from annotation_helpers import PAPER, SHAPE, kidney_mask, qupath_feature, rect

from ops.labelling.class_maps import IGNORE_INDEX, AnnotationError
from ops.labelling.geojson import load_geojson_mask, mask_to_geojson, qupath_color_rgb, save_geojson


def test_geojson_qupath_features(tmp_path) -> None:
    doc = {
        "type": "FeatureCollection",
        "features": [
            qupath_feature("glomerulus", [rect(10, 10, 20, 20)]),  # drawn first but smaller: must win over cortex
            qupath_feature("cortical tubulointerstitium", [rect(5, 5, 40, 30), rect(30, 8, 35, 12)]),  # with a hole
            qupath_feature("artery", [[rect(42, 32, 48, 38)], [rect(0, 36, 2, 40)]], kind="MultiPolygon", colour=None),
        ],
    }
    path = save_geojson(tmp_path / "img_0.geojson", doc)
    mask = load_geojson_mask(path, SHAPE, PAPER.classes)
    expected = kidney_mask()
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
    mask = kidney_mask()
    mask[rng.random(SHAPE) < 0.03] = 3  # speckle: single pixels, diagonal neighbours, holes of one pixel
    doc = mask_to_geojson(mask, PAPER)
    names = {f["properties"]["classification"]["name"] for f in doc["features"]}
    assert names == set(PAPER.classes[1:])  # background (0) is not exported: importers fill it back in
    cls = doc["features"][0]["properties"]["classification"]
    assert cls["colorRGB"] == qupath_color_rgb(PAPER.colours[PAPER.index(cls["name"])])
    path = save_geojson(tmp_path / "a.geojson", doc)
    np.testing.assert_array_equal(load_geojson_mask(path, SHAPE, PAPER.classes), mask)


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
    typo = json.dumps([qupath_feature("glomerulous", [rect(1, 1, 5, 5)])])
    with pytest.raises(
        AnnotationError,
        match=r"feature 0: unknown class 'glomerulous' \(did you mean 'glomerulus'\?\)"
        r"; known classes: \['whitespace', ",
    ):
        load_geojson_mask(write("typo.geojson", typo), SHAPE, PAPER.classes)
    unclassified = json.dumps(
        [{"type": "Feature", "geometry": {"type": "Polygon", "coordinates": [rect(1, 1, 5, 5)]}, "properties": {}}]
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
    big = json.dumps([qupath_feature("artery", [rect(10, 10, 100, 30)])])  # drawn on a 2x larger image
    with pytest.raises(
        AnnotationError,
        match=r"big\.geojson: feature 0 \('artery'\) spans x 10\.\.100.*outside the "
        r"40x50 \(HxW\) image",
    ):
        load_geojson_mask(write("big.geojson", big), SHAPE, PAPER.classes)


def test_degenerate_rings_are_skipped_and_wrong_nesting_is_refused(tmp_path) -> None:
    click = [[3, 3], [4, 4]]  # a stray two-vertex "polygon" and a two-vertex hole: nothing to paint, skipped
    doc = [
        qupath_feature("artery", [click]),
        qupath_feature("glomerulus", [rect(10, 10, 20, 20), click]),
    ]
    mask = load_geojson_mask(
        save_geojson(tmp_path / "a.geojson", {"type": "FeatureCollection", "features": doc}), SHAPE, PAPER.classes
    )
    assert (mask == 2).sum() == 100 and (mask == 4).sum() == 0
    nested = [qupath_feature("artery", [[rect(42, 32, 48, 38)]])]  # a MultiPolygon's nesting under type Polygon
    with pytest.raises(
        AnnotationError, match=r"feature 0 has malformed coordinates \(a ring must be a list of \[x, y\]"
    ):
        load_geojson_mask(save_geojson(tmp_path / "n.geojson", nested), SHAPE, PAPER.classes)
