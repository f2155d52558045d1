"""The equal-label-budget entry point: trains on the given crops only and returns labelled generated pairs."""

import dataclasses

import numpy as np
import pytest

from ops.genseg.budget import BudgetConfig, budget_config, budget_pairs


def _crops(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    masks = np.zeros((n, 64, 64), np.uint8)
    masks[:, 16:40, 8:50] = 3
    masks[:, :4] = 255
    images = rng.integers(0, 255, (n, 64, 64, 3), dtype=np.uint8)
    images[masks == 3] //= 3  # class 3 is dark
    return images, masks


TWO_STEPS = budget_config(BudgetConfig(steps=2, device="cpu"), batch_size=2, seg_base_channels=4)


def test_budget_pairs_returns_labelled_pairs_of_the_crops_size():
    images, masks = _crops(2, 0)
    val_images, val_masks = _crops(2, 1)
    unlabelled = _crops(3, 2)[0]
    out_images, out_masks = budget_pairs(
        images, masks, val_images, val_masks, unlabelled, n_pairs=5, n_classes=4, seed=0, cfg=TWO_STEPS
    )
    assert out_images.shape == (5, 64, 64, 3) and out_images.dtype == np.uint8
    assert out_masks.shape == (5, 64, 64) and out_masks.dtype == np.uint8
    assert set(np.unique(out_masks).tolist()) <= {0, 3}, "augmented expert masks, fully labelled"
    again = budget_pairs(images, masks, val_images, val_masks, unlabelled, 5, 4, 0, TWO_STEPS)
    np.testing.assert_array_equal(again[1], out_masks)
    np.testing.assert_array_equal(again[0], out_images)


def test_budget_pairs_refuses_bad_input_with_the_fix():
    images, masks = _crops(2, 0)
    with pytest.raises(ValueError, match=r"masks: class ids \[3\] found but n_classes=3"):
        budget_pairs(images, masks, images, masks, None, 2, 3, 0, TWO_STEPS)
    with pytest.raises(ValueError, match=r"val_images: expected uint8 \[N >= 1, 64, 64, 3\]"):
        budget_pairs(images, masks, images[:, :32, :32], masks, None, 2, 4, 0, TWO_STEPS)
    with pytest.raises(ValueError, match="unknown GenSeg budget preset 'fast'"):
        budget_pairs(images, masks, images, masks, None, 2, 4, 0, "fast")
    assert budget_config("quick", search=False).train.search is False
    assert BudgetConfig.from_dict(TWO_STEPS.to_dict()) == TWO_STEPS
    assert dataclasses.replace(TWO_STEPS, steps=3).train.batch_size == 2
