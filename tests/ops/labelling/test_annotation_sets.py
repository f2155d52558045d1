"""Annotation sets: pairing files with images, the suffix dispatch, content versioning and splits."""

from __future__ import annotations

import numpy as np
import pytest
from annotation_helpers import PAPER, SHAPE

from ops.labelling.annotation_sets import annotation_set_version, load_mask, match_annotations, split_indices
from ops.labelling.class_maps import AnnotationError


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


def test_unsupported_suffix(tmp_path) -> None:
    with pytest.raises(AnnotationError, match=r"unsupported annotation file type '\.tif'"):
        load_mask(tmp_path / "a.tif", SHAPE, PAPER)


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
