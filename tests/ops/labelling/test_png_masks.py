"""Indexed and gray PNG masks: round trips, RGB by class colour, and every error path."""

from __future__ import annotations

import numpy as np
import pytest
from annotation_helpers import PAPER, SHAPE, kidney_mask
from PIL import Image

from ops.labelling.annotation_sets import load_mask
from ops.labelling.class_maps import IGNORE_INDEX, AnnotationError
from ops.labelling.png_masks import load_png_mask, save_png_mask


def test_png_indexed_and_gray_round_trip(tmp_path) -> None:
    mask = kidney_mask()
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
