"""Label scores of exported pairs: does each synthetic mask say what its image shows?

A synthetic pair is only worth training on when its mask agrees with its image. Two scores, both per pair:

* ``fidelity`` — when a labeller that can label *any* image exists (the demo's stand-in annotator), apply it to the
  exported image and compare with the exported mask. A real pair labelled by the same labeller scores 1.0, so the
  number reads directly as "how much of the truth the route keeps".
* ``judge_agreement`` — with expert data there is no such labeller; a judge segmenter trained on the real annotated
  training tiles predicts each exported image instead. Its agreement only has a scale next to the judge's own Dice on
  held-out real tiles (a judge that scores 0.7 on real tiles cannot confirm a mask beyond about 0.7).

Both use the same per-pair Dice: mean over the classes present in the mask or the prediction, as the segmentation
metrics of ``ops.evaluation.metrics`` do for a whole test set. Per-class values are kept so the dataset card can say
which class a route gets wrong.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import pandas as pd

from ops.evaluation.metrics import IGNORE_INDEX

Labeller = Callable[[np.ndarray], np.ndarray]  # uint8 [N, H, W, 3] images -> uint8 [N, H, W] class ids


def pair_dice(
    truth: np.ndarray,
    pred: np.ndarray,
    n_classes: int,
    ignore_index: int = IGNORE_INDEX,
    unlabelled_as_miss: bool = False,
) -> tuple[np.ndarray, np.ndarray]:
    """Dice per pair and class, and its mean over the classes present, from one ``np.bincount``.

    Args:
        truth: ``[N, H, W]`` class ids (the reference: the labeller's or judge's labels).
        pred: ``[N, H, W]`` class ids (the exported masks).
        n_classes: K.
        ignore_index: Value in ``truth`` or ``pred`` left out of the counts.
        unlabelled_as_miss: Count ``pred``'s ``ignore_index`` pixels (a mask's unlabelled pixels) as misses of the
            truth's class instead of leaving them out: the score of the whole mask, not only of what it labels, so
            a mask cannot score higher by labelling less.

    Returns:
        ``mean`` float64 ``[N]`` (NaN when a pair has no counted pixel) and ``per_class`` float64 ``[N, K]`` (NaN
        where the class is absent from both).

    Raises:
        ValueError: shapes differ or class ids lie outside ``0..K-1``.
    """
    truth, pred = np.asarray(truth), np.asarray(pred)
    if truth.shape != pred.shape or truth.ndim != 3:
        raise ValueError(
            f"pair_dice: expected two [N, H, W] arrays of equal shape, received {truth.shape}, {pred.shape}"
        )
    n = len(truth)
    t, p = truth.reshape(n, -1).astype(np.int64), pred.reshape(n, -1).astype(np.int64)
    keep = (t != ignore_index) & (p != ignore_index)
    for name, v in (("truth", t[keep]), ("pred", p[keep])):
        if v.size and (v.min() < 0 or v.max() >= n_classes):
            raise ValueError(f"pair_dice: {name} has class ids outside 0..{n_classes - 1} ({v.min()}..{v.max()})")
    if unlabelled_as_miss:  # an extra predicted "class" K: a miss of the truth's class, never a hit
        keep = t != ignore_index
        p = np.where(p == ignore_index, n_classes, p)
    cols = n_classes + int(unlabelled_as_miss)
    pair = np.broadcast_to(np.arange(n)[:, None], t.shape)
    index = (pair[keep] * n_classes + t[keep]) * cols + p[keep]
    cm = np.bincount(index, minlength=n * n_classes * cols).reshape(n, n_classes, cols).astype(np.float64)
    tp = np.diagonal(cm, axis1=1, axis2=2)
    denom = cm.sum(axis=2) + cm.sum(axis=1)[:, :n_classes]  # 2 TP + FP + FN per class
    with np.errstate(invalid="ignore", divide="ignore"):
        per_class = np.where(denom > 0, 2 * tp / denom, np.nan)
        present = np.isfinite(per_class)
        mean = np.where(present.any(axis=1), np.nansum(per_class, axis=1) / present.sum(axis=1), np.nan)
    return mean, per_class


def fidelity(
    images: np.ndarray, masks: np.ndarray, labeller: Labeller, n_classes: int
) -> tuple[np.ndarray, np.ndarray]:
    """Per-pair Dice between ``labeller(images)`` and ``masks`` (see :func:`pair_dice` for the returns)."""
    _check_pairs(images, masks)
    return pair_dice(labeller(images), masks, n_classes)


def judge_agreement(
    images: np.ndarray, masks: np.ndarray, judge: Labeller, n_classes: int
) -> tuple[np.ndarray, np.ndarray]:
    """Per-pair Dice between a judge segmenter's predictions and ``masks``; the same computation as
    :func:`fidelity`, named apart because its scale is the judge's own held-out Dice, not 1.0."""
    _check_pairs(images, masks)
    return pair_dice(judge(images), masks, n_classes)


def _check_pairs(images: np.ndarray, masks: np.ndarray) -> None:
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[:3] != masks.shape:
        raise ValueError(
            f"label scores: expected uint8 images [N, H, W, 3] with masks [N, H, W], received {images.dtype} "
            f"{images.shape} with {masks.shape}"
        )


def route_summary(
    scores: pd.DataFrame, per_class: np.ndarray, class_names: Sequence[str], column: str
) -> dict[str, dict[str, float]]:
    """Mean of ``column`` per generator route, with the per-class means (NaN-skipping) beside it.

    Args:
        scores: One row per pair with columns ``generator`` and ``column``.
        per_class: ``[N, K]`` per-class Dice of the same rows (from :func:`pair_dice`).
        class_names: The K class names.
        column: ``fidelity`` or ``judge_agreement``.

    Returns:
        ``{route: {"pairs": n, "<column>": mean, "<column>/<class>": mean, ...}}``.
    """
    if len(scores) != len(per_class):
        raise ValueError(f"route_summary: {len(scores)} rows but {len(per_class)} per-class rows")
    out: dict[str, dict[str, float]] = {}
    for route in sorted(scores["generator"].unique()):
        rows = (scores["generator"] == route).to_numpy()
        values = scores.loc[rows, column].to_numpy(np.float64)
        stats = {"pairs": float(rows.sum()), column: _nanmean(values)}
        for k, name in enumerate(class_names):
            stats[f"{column}/{name}"] = _nanmean(per_class[rows, k])
        out[str(route)] = stats
    return out


def agreement_correlation(fidelity_values: np.ndarray, judge_values: np.ndarray) -> float:
    """Pearson correlation of judge agreement with fidelity over pairs where both are finite (NaN below 3 pairs).

    On the demo both exist; a high correlation says the judge can stand in for the missing labeller on expert data.
    """
    a, b = np.asarray(fidelity_values, np.float64), np.asarray(judge_values, np.float64)
    ok = np.isfinite(a) & np.isfinite(b)
    if ok.sum() < 3 or a[ok].std() == 0 or b[ok].std() == 0:
        return float("nan")
    return float(np.corrcoef(a[ok], b[ok])[0, 1])


def below_agreement(values: np.ndarray, min_agreement: float) -> np.ndarray:
    """Boolean ``[N]``: pairs whose score is below ``min_agreement`` (NaN scores are kept: nothing to judge)."""
    if not 0 <= min_agreement <= 1:
        raise ValueError(f"min_agreement: expected a Dice in [0, 1], received {min_agreement!r}")
    values = np.asarray(values, np.float64)
    return np.isfinite(values) & (values < min_agreement)


def _nanmean(values: np.ndarray) -> float:
    values = np.asarray(values, np.float64)
    return float(np.nanmean(values)) if np.isfinite(values).any() else float("nan")
