"""Label scores of exported pairs: fidelity against the stand-in, judge agreement, per-route summaries."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from skimage import data

from ops.export.label_scores import (
    agreement_correlation,
    below_agreement,
    fidelity,
    judge_agreement,
    pair_dice,
    route_summary,
)
from ops.labelling.demo_annotator import DEMO_CLASS_MAP, demo_annotate

K = DEMO_CLASS_MAP.n_classes


def _stand_in(images: np.ndarray) -> np.ndarray:
    return np.stack([demo_annotate(img) for img in images])


@pytest.fixture(scope="module")
def real_pairs() -> tuple[np.ndarray, np.ndarray]:
    """Eight 64-px crops of the IHC reference image, labelled by the stand-in (as real demo pairs are)."""
    ihc = data.immunohistochemistry()
    images = np.stack([ihc[y : y + 64, x : x + 64] for y in (0, 128, 256, 384) for x in (64, 320)])
    return images, _stand_in(images)


def test_pair_dice_matches_hand_computed_values() -> None:
    truth = np.array([[[0, 0], [1, 1]], [[0, 0], [0, 0]]], np.uint8)
    pred = np.array([[[0, 1], [1, 1]], [[0, 0], [0, 0]]], np.uint8)
    mean, per_class = pair_dice(truth, pred, 3)
    # pair 0: class 0 TP 1 FN 1 -> 2/3; class 1 TP 2 FP 1 -> 4/5; class 2 absent -> NaN
    assert per_class[0, :2] == pytest.approx([2 / 3, 4 / 5]) and np.isnan(per_class[0, 2])
    assert mean == pytest.approx([(2 / 3 + 4 / 5) / 2, 1.0])


def test_unlabelled_pixels_are_left_out_or_counted_as_misses() -> None:
    truth = np.array([[[0, 0], [1, 1]]], np.uint8)
    pred = np.array([[[0, 255], [1, 255]]], np.uint8)  # half the mask unlabelled, what it labels is right
    labelled, _ = pair_dice(truth, pred, 3)
    whole, per_class = pair_dice(truth, pred, 3, unlabelled_as_miss=True)
    assert labelled == pytest.approx([1.0])
    # class 0: TP 1, FN 1 (the unlabelled pixel) -> 2/3; class 1 likewise; no class gains a false positive
    assert per_class[0, :2] == pytest.approx([2 / 3, 2 / 3]) and np.isnan(per_class[0, 2])
    assert whole == pytest.approx([2 / 3])
    # a fully labelled mask scores the same either way; the truth's own unlabelled pixels stay out in both
    full = np.array([[[0, 1], [1, 255]]], np.uint8)
    assert pair_dice(full, truth, 3, unlabelled_as_miss=True)[0] == pytest.approx(pair_dice(full, truth, 3)[0])


def test_fidelity_is_one_for_real_pairs_and_falls_when_masks_are_corrupted(real_pairs) -> None:
    images, masks = real_pairs
    exact, _ = fidelity(images, masks, _stand_in, K)
    assert exact == pytest.approx(np.ones(len(images)))
    shuffled, _ = fidelity(images, np.roll(masks, 1, axis=0), _stand_in, K)  # another image's mask
    assert shuffled.mean() < 0.8
    noisy = masks.copy()
    noisy[:, ::2] = (noisy[:, ::2] + 1) % K  # every other row relabelled
    half, _ = fidelity(images, noisy, _stand_in, K)
    assert (half < exact).all() and shuffled.mean() < exact.mean()


def test_judge_agreement_is_computed_and_bounded(real_pairs) -> None:
    images, masks = real_pairs
    rng = np.random.default_rng(0)
    judge = lambda x: np.where(rng.random(x.shape[:3]) < 0.7, _stand_in(x), 0).astype(np.uint8)  # noqa: E731
    agreement, per_class = judge_agreement(images, masks, judge, K)
    assert agreement.shape == (len(images),) and per_class.shape == (len(images), K)
    assert np.all((agreement >= 0) & (agreement <= 1)) and 0 < agreement.mean() < 1


def test_route_summary_correlation_and_threshold() -> None:
    scores = pd.DataFrame({"generator": ["a", "a", "b"], "fidelity": [0.2, 0.4, 0.9]})
    per_class = np.array([[0.1, np.nan], [0.3, 0.5], [0.9, 0.9]])
    summary = route_summary(scores, per_class, ["x", "y"], "fidelity")
    assert summary["a"]["fidelity"] == pytest.approx(0.3) and summary["a"]["pairs"] == 2
    assert summary["a"]["fidelity/x"] == pytest.approx(0.2) and summary["a"]["fidelity/y"] == pytest.approx(0.5)
    assert agreement_correlation(np.array([0.1, 0.5, 0.9, np.nan]), np.array([0.2, 0.4, 0.8, 0.1])) > 0.9
    assert below_agreement(np.array([0.1, np.nan, 0.6]), 0.5).tolist() == [True, False, False]
    with pytest.raises(ValueError, match="min_agreement: expected a Dice in \\[0, 1\\]"):
        below_agreement(np.array([0.1]), 1.5)


def test_bad_inputs_are_named() -> None:
    with pytest.raises(ValueError, match="expected uint8 images"):
        fidelity(np.zeros((2, 8, 8, 3), np.float32), np.zeros((2, 8, 8), np.uint8), _stand_in, K)
    with pytest.raises(ValueError, match="class ids outside 0..2"):
        pair_dice(np.full((1, 2, 2), 5, np.uint8), np.zeros((1, 2, 2), np.uint8), 3)
