"""Segmentation metrics as HDGAN reports them, plus the PNGs that go into asset metadata.

Everything derives from one confusion matrix built with a single ``np.bincount``, so the numbers for a 4096^2 mask
cost one pass and can be accumulated image by image (confusion matrices add).

Conventions: rows = truth, columns = prediction. HDGAN's "class-wise pixel accuracy" (Table 1) is the recall of
each class, ``TP / (TP + FN)``. Dice of a class absent from both truth and prediction is NaN (nothing to score, not
a perfect or a failed score) and is left out of the mean.
"""

from __future__ import annotations

import io
from collections.abc import Sequence

import numpy as np
from PIL import Image

from ops.labelling.class_maps import IGNORE_INDEX  # one unlabelled value for masks, losses and scores


def confusion_matrix(
    y_true: np.ndarray, y_pred: np.ndarray, n_classes: int, ignore_index: int = IGNORE_INDEX
) -> np.ndarray:
    """Pixel confusion matrix ``cm[t, p]`` = pixels of true class t predicted as p.

    Args:
        y_true: Class ids, any shape.
        y_pred: Class ids, same shape.
        n_classes: K.
        ignore_index: Truth value excluded from counting (unannotated pixels).

    Returns:
        int64 ``[K, K]``.

    Raises:
        ValueError: Shape mismatch or ids outside ``0..K-1``.
    """
    y_true, y_pred = np.asarray(y_true), np.asarray(y_pred)
    if y_true.shape != y_pred.shape:
        raise ValueError(f"y_true has shape {y_true.shape}, y_pred {y_pred.shape}: expected equal shapes")
    t = y_true.ravel().astype(np.int64)
    p = y_pred.ravel().astype(np.int64)
    keep = t != ignore_index
    t, p = t[keep], p[keep]
    for name, v in (("y_true", t), ("y_pred", p)):
        if v.size and (v.min() < 0 or v.max() >= n_classes):
            raise ValueError(f"{name} has class ids outside 0..{n_classes - 1} (found {v.min()}..{v.max()})")
    return np.bincount(t * n_classes + p, minlength=n_classes * n_classes).reshape(n_classes, n_classes)


def class_accuracy(cm: np.ndarray) -> np.ndarray:
    """Per-class pixel accuracy (recall) ``TP / (TP + FN)``; NaN for classes absent from the truth."""
    cm = np.asarray(cm, np.float64)
    support = cm.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(support > 0, np.diag(cm) / support, np.nan)


def pixel_accuracy(cm: np.ndarray) -> float:
    """Share of all counted pixels predicted correctly."""
    total = cm.sum()
    return float(np.trace(cm) / total) if total else float("nan")


def dice_per_class(cm: np.ndarray) -> np.ndarray:
    """Dice ``2 TP / (2 TP + FP + FN)`` per class; NaN where the class is absent in truth and prediction."""
    cm = np.asarray(cm, np.float64)
    tp = np.diag(cm)
    denom = cm.sum(axis=0) + cm.sum(axis=1)  # = 2 TP + FP + FN
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(denom > 0, 2 * tp / denom, np.nan)


def mean_dice(cm: np.ndarray) -> float:
    """Mean Dice over classes present in truth or prediction (NaN if none)."""
    d = dice_per_class(cm)
    return float(np.nanmean(d)) if np.isfinite(d).any() else float("nan")


def chance_mean_dice(cm: np.ndarray) -> float:
    """Mean Dice an image-blind labeller reaches that knows only the true class shares (the classifier's chance).

    A labeller that gives each pixel class k with probability ``r_k``, independently of the image, scores class k
    with share ``p_k`` an expected Dice of ``2 p_k r_k / (p_k + r_k)``. Over ``sum(r) = 1`` the mean is largest at
    ``r = p``, where class k scores ``p_k``; so chance is the mean of the present classes' shares, ``1 / K_present``,
    whatever the imbalance. Always answering the majority class does worse (``2 p / (1 + p) / K_present``).
    """
    support = np.asarray(cm, np.float64).sum(axis=1)
    if support.sum() == 0:
        return float("nan")
    shares = support / support.sum()
    return float(shares[shares > 0].mean())


def segmentation_report(cm: np.ndarray, class_names: Sequence[str]) -> dict[str, float]:
    """Flat dict of all metrics (``dice/<class>``, ``accuracy/<class>``, means), for asset metadata/MLflow."""
    if len(class_names) != cm.shape[0]:
        raise ValueError(f"{len(class_names)} class names for a {cm.shape[0]}-class confusion matrix")
    report = {"pixel_accuracy": pixel_accuracy(cm), "mean_dice": mean_dice(cm)}
    acc = class_accuracy(cm)
    report["mean_class_accuracy"] = float(np.nanmean(acc)) if np.isfinite(acc).any() else float("nan")
    for name, d, a in zip(class_names, dice_per_class(cm), acc, strict=True):
        report[f"dice/{name}"] = float(d)
        report[f"accuracy/{name}"] = float(a)
    return report


def confusion_matrix_png(cm: np.ndarray, class_names: Sequence[str], normalize: bool = True) -> bytes:
    """Render the confusion matrix as PNG bytes (rows normalised to recall when ``normalize``)."""
    from matplotlib.figure import Figure  # OO API renders with Agg, no pyplot global state; imported lazily (~0.3 s)

    cm = np.asarray(cm, np.float64)
    shown = cm / np.maximum(cm.sum(axis=1, keepdims=True), 1) if normalize else cm
    k = len(class_names)
    fig = Figure(figsize=(1.2 + 0.7 * k, 1.0 + 0.6 * k), dpi=100)
    ax = fig.add_subplot()
    im = ax.imshow(shown, cmap="Blues", vmin=0, vmax=1 if normalize else None)
    ax.set_xticks(range(k), labels=list(class_names), rotation=45, ha="right", fontsize=8)
    ax.set_yticks(range(k), labels=list(class_names), fontsize=8)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    for (i, j), v in np.ndenumerate(shown):  # k^2 text labels, not pixels
        ax.text(
            j,
            i,
            f"{v:.2f}" if normalize else f"{int(v)}",
            ha="center",
            va="center",
            fontsize=7,
            color="white" if v > 0.5 * shown.max() else "black",
        )
    fig.colorbar(im, ax=ax, fraction=0.046)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()


def overlay_png(
    image: np.ndarray,
    mask: np.ndarray,
    colours: Sequence[tuple[int, int, int]],
    alpha: float = 0.45,
    ignore_index: int = IGNORE_INDEX,
) -> bytes:
    """Blend class colours over an RGB image and return PNG bytes; ``ignore_index`` pixels stay unblended.

    Args:
        image: ``uint8 [H, W, 3]`` (or ``[H, W]`` gray).
        mask: ``[H, W]`` class ids.
        colours: RGB per class id.
        alpha: Opacity of the colours.
        ignore_index: Label left uncoloured.
    """
    image = np.asarray(image)
    if image.ndim == 2:
        image = np.repeat(image[..., None], 3, axis=2)
    if image.shape[:2] != mask.shape:
        raise ValueError(f"image is {image.shape[:2]}, mask {mask.shape}: expected the same height and width")
    lut = np.zeros((256, 3), np.float32)
    lut[: len(colours)] = np.asarray(colours, np.float32)
    painted = (mask != ignore_index) & (mask < len(colours))
    out = image[..., :3].astype(np.float32)
    out[painted] = (1 - alpha) * out[painted] + alpha * lut[mask[painted]]
    buf = io.BytesIO()
    Image.fromarray(np.clip(out + 0.5, 0, 255).astype(np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


def mask_agreement(
    images: np.ndarray,
    masks: np.ndarray,
    ref_images: np.ndarray,
    ref_masks: np.ndarray,
    n_classes: int,
    ignore_index: int = IGNORE_INDEX,
) -> dict[str, float]:
    """Do generated colours follow their masks' classes better than chance? (mask-conditioned generators)

    Each class gets its mean colour from real pairs (``ref_*``); every generated pixel is assigned the class of the
    nearest mean colour, and the accuracy against its own mask is compared with the accuracy against the mask of
    another image (masks rolled by one: same class statistics, wrong layout). A ratio > 1 means the image follows
    its mask; 1 is what an unconditional generator scores. Colour alone cannot separate classes that share a
    stain, so the ratio measures the conditioning, not the absolute label quality.

    Args:
        images: ``uint8 [N, H, W, 3]`` generated images (N >= 2).
        masks: ``[N, H, W]`` the masks they were generated from.
        ref_images: ``uint8 [M, H', W', 3]`` real images.
        ref_masks: ``[M, H', W']`` their masks.
        n_classes: K.
        ignore_index: Label left out everywhere.

    Returns:
        ``accuracy`` (own masks), ``chance`` (rolled masks) and ``mask_agreement`` = accuracy / chance.
    """
    if images.shape[:3] != masks.shape or ref_images.shape[:3] != ref_masks.shape or len(images) < 2:
        raise ValueError(
            f"expected images [N>=2, H, W, 3] with masks [N, H, W]; received {images.shape} with "
            f"{masks.shape} and references {ref_images.shape} with {ref_masks.shape}"
        )
    ref_m = ref_masks.ravel()
    valid = ref_m != ignore_index
    colours = ref_images.reshape(-1, 3)[valid].astype(np.float64)
    counts = np.bincount(ref_m[valid], minlength=n_classes)[:n_classes]
    sums = np.stack(
        [np.bincount(ref_m[valid], weights=colours[:, c], minlength=n_classes)[:n_classes] for c in range(3)], axis=1
    )
    present = counts > 0
    centroids = sums[present] / counts[present, None]
    pixels = images.reshape(-1, 3).astype(np.float64)
    nearest = ((pixels[:, None, :] - centroids[None]) ** 2).sum(-1).argmin(1)
    predicted = np.flatnonzero(present)[nearest].reshape(masks.shape)

    def accuracy(truth: np.ndarray) -> float:
        keep = truth != ignore_index
        return float((predicted[keep] == truth[keep]).mean()) if keep.any() else float("nan")

    own, rolled = accuracy(masks), accuracy(np.roll(masks, 1, axis=0))
    return {"accuracy": own, "chance": rolled, "mask_agreement": own / rolled if rolled > 0 else float("nan")}
