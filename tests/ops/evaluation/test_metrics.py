"""Segmentation metrics on masks whose Dice and accuracy are known by hand."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from ops.evaluation.metrics import (
    chance_mean_dice,
    class_accuracy,
    confusion_matrix,
    confusion_matrix_png,
    dice_per_class,
    mean_dice,
    overlay_png,
    pixel_accuracy,
    segmentation_report,
)


def _masks() -> tuple[np.ndarray, np.ndarray]:
    """4x4 truth: left half 0, right half 1. Prediction moves one truth-1 pixel to 0 and one truth-0 to 2."""
    truth = np.zeros((4, 4), np.uint8)
    truth[:, 2:] = 1
    pred = truth.copy()
    pred[0, 2] = 0
    pred[3, 0] = 2
    return truth, pred


def test_confusion_matrix_and_scores() -> None:
    truth, pred = _masks()
    cm = confusion_matrix(truth, pred, n_classes=4)
    np.testing.assert_array_equal(cm, [[7, 0, 1, 0], [1, 7, 0, 0], [0, 0, 0, 0], [0, 0, 0, 0]])
    np.testing.assert_allclose(class_accuracy(cm), [7 / 8, 7 / 8, np.nan, np.nan])
    # Dice 0: 2*7 / (8 truth + 8 predicted); class 2 predicted but absent in truth: 0; class 3 absent: NaN.
    np.testing.assert_allclose(dice_per_class(cm), [14 / 16, 14 / 15, 0.0, np.nan])
    assert mean_dice(cm) == pytest.approx((14 / 16 + 14 / 15 + 0.0) / 3)
    assert pixel_accuracy(cm) == pytest.approx(14 / 16)


def test_ignore_index_and_accumulation() -> None:
    truth, pred = _masks()
    truth_ignored = truth.copy()
    truth_ignored[3, 0] = 255  # the wrongly predicted background pixel is unannotated
    cm = confusion_matrix(truth_ignored, pred, 3)
    assert cm.sum() == 15 and cm[0, 2] == 0
    # Confusion matrices add over images, so big masks can be scored image by image.
    np.testing.assert_array_equal(
        confusion_matrix(np.stack([truth, truth]), np.stack([pred, pred]), 3), 2 * confusion_matrix(truth, pred, 3)
    )
    assert np.isnan(mean_dice(np.zeros((3, 3), np.int64)))


def test_errors() -> None:
    with pytest.raises(ValueError, match=r"expected equal shapes"):
        confusion_matrix(np.zeros(3), np.zeros(4), 2)
    with pytest.raises(ValueError, match=r"y_pred has class ids outside 0\.\.1 \(found 0\.\.5\)"):
        confusion_matrix(np.zeros(3, int), np.array([0, 1, 5]), 2)


def test_report_and_pngs() -> None:
    truth, pred = _masks()
    cm = confusion_matrix(truth, pred, 3)
    report = segmentation_report(cm, ["bg", "tissue", "vessel"])
    assert report["dice/tissue"] == pytest.approx(14 / 15) and report["accuracy/bg"] == pytest.approx(7 / 8)
    png = confusion_matrix_png(cm, ["bg", "tissue", "vessel"])
    assert Image.open(io.BytesIO(png)).format == "PNG"
    image = np.full((4, 4, 3), 200, np.uint8)
    mask = truth.copy()
    mask[0, 0] = 255
    over = np.asarray(Image.open(io.BytesIO(overlay_png(image, mask, [(0, 0, 0), (255, 0, 0)], alpha=0.5))))
    assert tuple(over[0, 0]) == (200, 200, 200)  # ignored pixel untouched
    assert tuple(over[0, 3]) == (228, 100, 100)  # half-way to red
    with pytest.raises(ValueError, match="expected the same height and width"):
        overlay_png(image, mask[:2], [(0, 0, 0)])


def test_chance_dice_is_what_an_image_blind_labeller_scores() -> None:
    rng = np.random.default_rng(0)
    shares = np.array([0.6, 0.3, 0.08, 0.02, 0.0])  # imbalanced, one class absent
    truth = rng.choice(5, size=200_000, p=shares)
    cm_truth = confusion_matrix(truth, truth, n_classes=5)
    chance = chance_mean_dice(cm_truth)
    assert chance == pytest.approx(1 / 4)
    blind = confusion_matrix(truth, rng.choice(5, size=truth.size, p=shares), n_classes=5)
    assert mean_dice(blind) == pytest.approx(chance, abs=0.01)
    uniform = confusion_matrix(truth, rng.choice(4, size=truth.size), n_classes=5)
    majority = confusion_matrix(truth, np.zeros_like(truth), n_classes=5)
    assert mean_dice(uniform) < chance and mean_dice(majority) < chance
    assert np.isnan(chance_mean_dice(np.zeros((3, 3))))
