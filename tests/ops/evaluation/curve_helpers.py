"""Tiny real pairs and curve settings shared by the learning-curve and budget-route tests."""

from __future__ import annotations

import numpy as np

from ops.evaluation.learning_curve import CurveConfig
from ops.evaluation.real_split import RealPairs

TINY = CurveConfig(
    budgets=(2, 4), seeds=(0, 1), lambdas=(0.3, 0.5), real_passes=2, min_steps=2, batch_real=2, batch_syn=2,
    base_channels=4, synthetic_max=6, n_boot=200,
)  # fmt: skip


def squares(n: int, seed: int, size: int = 16) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    masks = np.zeros((n, size, size), np.uint8)
    for m, (y, x) in zip(masks, rng.integers(0, size - 6, (n, 2)), strict=True):
        m[y : y + 6, x : x + 6] = 1
    images = np.clip(rng.normal(70, 20, (n, size, size, 3)) + 110 * masks[..., None], 0, 255).astype(np.uint8)
    return images, masks


def tiny_real_pairs() -> RealPairs:
    """14 square crops: 8 training crops of 4 tiles, 3 validation and 3 test crops of held-out tiles."""
    images, masks = squares(14, 0)
    ids = np.array([f"s#{i // 2}" for i in range(8)] + [f"h#{i}" for i in range(6)])
    parts = np.array(["train"] * 8 + ["val"] * 3 + ["test"] * 3)
    return RealPairs(images, masks, ids, parts)
