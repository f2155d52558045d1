"""The demo stand-in annotator: stable classes with real shares, labels that need context, expert file formats."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage
from skimage import color, data

from ops.evaluation.metrics import confusion_matrix, mean_dice, pixel_accuracy
from ops.labelling.annotation_sets import load_mask
from ops.labelling.demo_annotator import (
    CELLULAR_STROMA,
    DEMO_CLASS_MAP,
    NUCLEUS_BORDER,
    NUCLEUS_INTERIOR,
    STROMA,
    DemoAnnotatorConfig,
    class_shares,
    demo_annotate,
    write_demo_annotation,
)


@pytest.fixture(scope="module")
def ihc() -> np.ndarray:
    return data.immunohistochemistry()


@pytest.fixture(scope="module")
def labels(ihc: np.ndarray) -> np.ndarray:
    return demo_annotate(ihc)


def best_colour_rule(image: np.ndarray, labels: np.ndarray, levels: int = 32) -> np.ndarray:
    """A strong per-pixel RGB classifier: the majority label of each quantised colour, fitted on the scored pixels.

    Fitted and scored on the same pixels, it matches an RGB MLP trained to convergence on this image (measured:
    both 0.80 pixel accuracy) in milliseconds instead of ~20 s.
    """
    q = (image.astype(np.int64) * levels) // 256
    key = ((q[..., 0] * levels + q[..., 1]) * levels + q[..., 2]).ravel()
    k = int(labels.max()) + 1
    table = np.bincount(key * k + labels.ravel(), minlength=levels**3 * k).reshape(levels**3, k)
    return table.argmax(axis=1)[key].reshape(labels.shape)


def test_all_classes_present_with_real_shares(labels: np.ndarray) -> None:
    shares = class_shares(labels)
    assert shares.shape == (DEMO_CLASS_MAP.n_classes,)
    assert (shares > 0.03).all(), dict(zip(DEMO_CLASS_MAP.classes, shares.round(3), strict=True))
    assert shares.max() < 0.6


def test_labels_need_context(ihc: np.ndarray, labels: np.ndarray) -> None:
    cm = confusion_matrix(labels, best_colour_rule(ihc, labels), DEMO_CLASS_MAP.n_classes)
    assert pixel_accuracy(cm) < 0.85 and mean_dice(cm) < 0.75  # measured 0.80 / 0.65

    # Control: the same colour rule does learn a colour-decided label (per-pixel DAB threshold) almost perfectly,
    # so the gap above is the labels needing context, not a weak classifier.
    dab_pixel = (color.rgb2hed(ihc)[..., 2] > 0.06).astype(np.uint8)
    control = confusion_matrix(dab_pixel, best_colour_rule(ihc, dab_pixel), 2)
    assert pixel_accuracy(control) > 0.95


def test_classes_follow_their_rules(labels: np.ndarray) -> None:
    nuclei = np.isin(labels, (NUCLEUS_INTERIOR, NUCLEUS_BORDER))
    depth = ndimage.distance_transform_edt(np.pad(nuclei, 1))[1:-1, 1:-1]
    band = DemoAnnotatorConfig().px(DemoAnnotatorConfig().nucleus_border_um)
    assert band >= 3
    assert depth[labels == NUCLEUS_BORDER].max() <= band < depth[labels == NUCLEUS_INTERIOR].min()
    density = ndimage.uniform_filter(nuclei.astype(np.float32), 25)
    assert density[labels == CELLULAR_STROMA].mean() > 2 * density[labels == STROMA].mean()


@pytest.mark.parametrize("size", [64, 200])
def test_any_size(ihc: np.ndarray, size: int) -> None:
    crop = np.ascontiguousarray(ihc[100 : 100 + size, 150 : 150 + size])
    out = demo_annotate(crop)
    assert out.shape == (size, size) and out.dtype == np.uint8 and out.max() < DEMO_CLASS_MAP.n_classes
    with pytest.raises(ValueError, match=r"expected uint8 RGB \[H, W, 3\]"):
        demo_annotate(crop.astype(np.float32))
    with pytest.raises(ValueError, match="mpp must be > 0"):
        DemoAnnotatorConfig(mpp=0)


def test_files_round_trip_through_importers(ihc: np.ndarray, labels: np.ndarray, tmp_path) -> None:
    crop = np.ascontiguousarray(ihc[:160, :192])
    written = write_demo_annotation(crop, tmp_path, "img_00007")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["img_00007.geojson", "img_00007.png"]
    truth = demo_annotate(crop)
    for fmt in ("png", "geojson"):
        np.testing.assert_array_equal(load_mask(written[fmt], truth.shape, DEMO_CLASS_MAP), truth, err_msg=fmt)
    with pytest.raises(ValueError, match=r"unknown formats \['tiff'\]"):
        write_demo_annotation(crop, tmp_path, "x", formats=("tiff",))
