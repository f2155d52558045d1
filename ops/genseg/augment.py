"""GenSeg step 1: new masks from the expert masks by rotation, flips and scaling (and, optionally, shape pasting).

A mask-to-image generator can only add what its masks add: every generated pair starts from a mask, so the masks must
vary beyond the N expert layouts. Each new mask is an expert mask under a random similarity transform (rotation by any
angle, isotropic scale, horizontal flip), resampled with nearest neighbour so that class ids stay exactly the ids of
the source (no interpolated, non-existent class) and with reflection at the border so that no pixel is left empty
(the generator must draw every pixel). Unlabelled pixels (255) of the expert masks are first filled from the nearest
labelled pixel, as the mask bank does for its canvases. Optionally a share of the sources comes from a
:class:`ops.diffusion.mask_bank.MaskBank` built from the same masks, which pastes annotation shapes to reach a class
balance (DISC's layout editing).

Vectorised as NVlabs' ``augment.py`` is: one composed 2×3 matrix per sample, one ``grid_sample`` for the batch. All
draws come from a ``numpy.random.Generator`` the caller seeds, so a mask is reproducible from its seed.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage

from ops.common.config_dict import DictConfig
from ops.diffusion.mask_bank import MaskBank
from ops.labelling.class_maps import IGNORE_INDEX


@dataclass(frozen=True)
class MaskAugmentConfig(DictConfig):
    """How expert masks are varied. Each transform defaults to GenSeg's (rotation, flip, scaling)."""

    rotate: bool = True  # rotation by an angle uniform in [0, 360) degrees (tissue has no preferred orientation)
    flip: bool = True  # horizontal flip with probability 0.5
    scale_min: float = 0.8  # isotropic zoom drawn log-uniformly in [scale_min, scale_max]; (1, 1) = off
    scale_max: float = 1.25
    bank_share: float = 0.0  # share of sources drawn from a mask bank of the same masks (shape pasting); 0 = off

    def __post_init__(self) -> None:
        if not 0 < self.scale_min <= self.scale_max:
            raise ValueError(
                f"MaskAugmentConfig.scale_min/scale_max: expected 0 < scale_min <= scale_max, received "
                f"{self.scale_min}, {self.scale_max}"
            )
        if not 0 <= self.bank_share <= 1:
            raise ValueError(f"MaskAugmentConfig.bank_share: expected a share in [0, 1], received {self.bank_share}")


def check_masks(masks: np.ndarray, n_classes: int, name: str = "masks") -> np.ndarray:
    """Class-id masks ``uint8 [N, R, R]`` with ids ``0..n_classes-1`` or 255; otherwise a clear error.

    A wrong class count is the most likely misuse (a class map of 6 classes with a generator for 3), and a class id
    beyond the one-hot width would otherwise be silently dropped.
    """
    masks = np.asarray(masks)
    if masks.dtype != np.uint8 or masks.ndim != 3 or masks.shape[1] != masks.shape[2] or len(masks) == 0:
        raise ValueError(
            f"{name}: expected uint8 [N, R, R] class-id masks (N >= 1), received {masks.dtype} {masks.shape}"
        )
    present = np.flatnonzero(np.bincount(masks.ravel(), minlength=256))
    bad = [int(v) for v in present if v >= n_classes and v != IGNORE_INDEX]
    if bad:
        raise ValueError(
            f"{name}: class ids {bad} found but n_classes={n_classes} (ids 0..{n_classes - 1}, {IGNORE_INDEX} = "
            f"unannotated). Fix: pass the class map's number of classes, or relabel those pixels"
        )
    return masks


def fill_unlabelled(masks: np.ndarray) -> np.ndarray:
    """Copy into every 255 pixel the class of the nearest labelled pixel (one EDT per mask, no pixel loop).

    A mask with no labelled pixel cannot be filled and raises: it carries no layout to generate from.
    """
    out = masks.copy()
    for i, mask in enumerate(out):
        holes = mask == IGNORE_INDEX
        if holes.all():
            raise ValueError(f"masks[{i}] has no labelled pixel; drop unannotated crops before augmenting")
        if holes.any():
            idx = ndimage.distance_transform_edt(holes, return_distances=False, return_indices=True)
            out[i] = mask[tuple(idx)]
    return out


def draw_transforms(rng: np.random.Generator, n: int, cfg: MaskAugmentConfig) -> np.ndarray:
    """``float32 [n, 2, 3]`` inverse similarity matrices in ``grid_sample``'s normalised coordinates.

    Each matrix maps an output pixel to where it is read in the source: rotation ``R(θ)``, zoom ``s`` (``1/s`` in the
    inverse: s > 1 magnifies) and a flip of the x axis, composed into one matrix.
    """
    theta = rng.uniform(0, 2 * np.pi, n) if cfg.rotate else np.zeros(n)
    log_s = rng.uniform(np.log(cfg.scale_min), np.log(cfg.scale_max), n)
    flip = np.where(rng.random(n) < 0.5, -1.0, 1.0) if cfg.flip else np.ones(n)
    c, s, inv = np.cos(theta), np.sin(theta), np.exp(-log_s)
    mats = np.zeros((n, 2, 3), np.float32)
    mats[:, 0, 0], mats[:, 0, 1] = c * inv * flip, -s * inv
    mats[:, 1, 0], mats[:, 1, 1] = s * inv * flip, c * inv
    return mats


def apply_transforms(masks: np.ndarray, mats: np.ndarray) -> np.ndarray:
    """Resample ``uint8 [n, R, R]`` masks under ``[n, 2, 3]`` matrices: nearest neighbour, reflection at the border."""
    assert masks.ndim == 3 and mats.shape == (len(masks), 2, 3), f"masks {masks.shape} vs matrices {mats.shape}"
    x = torch.from_numpy(np.ascontiguousarray(masks)).float()[:, None]  # [n, 1, R, R]
    grid = F.affine_grid(torch.from_numpy(mats), list(x.shape), align_corners=False)
    out = F.grid_sample(x, grid, mode="nearest", padding_mode="reflection", align_corners=False)
    return out[:, 0].round().to(torch.uint8).numpy()


def augment_masks(
    masks: np.ndarray,  # uint8 [N, R, R] expert masks, 255 = unannotated
    n: int,  # masks to make
    rng: np.random.Generator,  # every draw comes from here
    cfg: MaskAugmentConfig,
    n_classes: int,  # K; ids must be 0..K-1 or 255
    bank: MaskBank | None = None,  # shape-pasting source for cfg.bank_share of the masks
    class_weights: dict[int, float] | None = None,  # bank masks: class id -> multiple of its share (3.0 = 3x)
) -> np.ndarray:
    """``n`` fully labelled masks ``uint8 [n, R, R]``: random sources, randomly rotated, flipped and scaled.

    Raises:
        ValueError: bad masks or class ids (see :func:`check_masks`), or ``bank_share > 0`` without a bank.
    """
    masks = check_masks(masks, n_classes)
    if cfg.bank_share > 0 and bank is None:
        raise ValueError(
            "MaskAugmentConfig.bank_share > 0 needs a mask bank; pass bank=MaskBank.from_masks(masks, n_classes) "
            "or set bank_share to 0"
        )
    usable = masks[(masks != IGNORE_INDEX).any(axis=(1, 2))]
    if not len(usable):
        raise ValueError("masks: every mask is unannotated (all 255); there is no layout to augment")
    canvases = fill_unlabelled(usable)
    sources = canvases[rng.integers(len(canvases), size=n)]
    if bank is not None and cfg.bank_share > 0:
        from_bank = rng.random(n) < cfg.bank_share
        if from_bank.any():
            seeds = rng.integers(0, 2**31 - 1, size=int(from_bank.sum()))
            sources[from_bank] = bank.sample(seeds, class_weights)
    return apply_transforms(sources, draw_transforms(rng, n, cfg))
