"""Mask bank: real label masks plus their annotation shapes, sampled into class-balanced layouts.

A mask-conditioned diffusion model (DISC / GenSeg style) draws an image *from* a mask, so the mask decides the labels
of the synthetic pair. To get "3x more of the rare class" we therefore edit masks, not images: start from a real
mask (its layout is realistic), then paste real annotation shapes of a class to raise its share, or dissolve its
components into their neighbours to lower it. Masks are ``uint8 [R, R]`` class ids with ``IGNORE_INDEX`` (255) for
unlabelled pixels; generated masks are always fully labelled, because the generator must draw every pixel.

Class reassignment: a class with fewer than ``min_shapes`` shapes of its own (one arteriole in the whole bank) would
be pasted as the same blob over and over, so its pool is widened with the ``_DONORS`` shapes of other classes closest
in (log) area to its own shapes, pasted with the rare class id. Matching sizes keeps whole-mask background regions out
of a small class's pool: one such paste would turn most of a mask into the rare class.
"""

from __future__ import annotations

import difflib
import os
import uuid
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
from scipy import ndimage

from ops.labelling.class_maps import IGNORE_INDEX

_FORMAT = 1  # bumped when the .npz layout changes
_DONORS = 32  # other-class shapes a class with too few own shapes may borrow (class reassignment)
_EIGHT = np.ones((3, 3), bool)  # 8-connectivity: a diagonal touch joins two pixels into one shape
_KEYS = (
    "format",
    "n_classes",
    "min_area",
    "masks",
    "shape_class",
    "shape_area",
    "shape_hw",
    "shape_offsets",
    "shape_pixels",
)


def _check_masks(masks: np.ndarray, n_classes: int) -> None:
    """Fail early on anything that is not a stack of square class-id masks; a wrong id would silently become a class."""
    if not 1 <= n_classes < IGNORE_INDEX:
        raise ValueError(f"n_classes: expected 1..{IGNORE_INDEX - 1}, received {n_classes}")
    if (
        not isinstance(masks, np.ndarray)
        or masks.dtype != np.uint8
        or masks.ndim != 3
        or masks.shape[0] == 0
        or masks.shape[1] != masks.shape[2]
    ):
        got = f"{masks.dtype} {masks.shape}" if isinstance(masks, np.ndarray) else type(masks).__name__
        raise ValueError(
            f"masks: expected a uint8 array [N, R, R] of square class-id masks (N >= 1), received {got}. "
            f"Fix: stack the masks with np.stack(...).astype(np.uint8)"
        )
    counts = np.bincount(masks.ravel(), minlength=256)
    bad = [v for v in np.flatnonzero(counts).tolist() if v >= n_classes and v != IGNORE_INDEX]
    if bad:
        raise ValueError(
            f"masks: expected class ids 0..{n_classes - 1} or {IGNORE_INDEX} (unlabelled), received "
            f"{bad}. Fix: relabel those pixels or raise n_classes"
        )
    empty = np.flatnonzero((masks != IGNORE_INDEX).sum(axis=(1, 2)) == 0)
    if empty.size:
        raise ValueError(
            f"masks: expected labelled pixels in every mask, masks {empty[:10].tolist()} are all "
            f"{IGNORE_INDEX}. Fix: drop unlabelled masks before building the bank"
        )


def shares(masks: np.ndarray, n_classes: int) -> np.ndarray:
    """Mean per-mask pixel share of each class among labelled pixels, float64 ``[n_classes]``.

    Each mask counts once (not each pixel), so one huge mask cannot dominate; ignore pixels are left out.
    """
    flat = np.asarray(masks).reshape(-1, np.asarray(masks).shape[-1] * np.asarray(masks).shape[-2]).astype(np.int64)
    valid = flat < n_classes
    keys = (np.arange(len(flat))[:, None] * n_classes + flat)[valid]
    counts = np.bincount(keys, minlength=len(flat) * n_classes).reshape(len(flat), n_classes)
    totals = counts.sum(axis=1, keepdims=True)
    per_mask = counts[totals[:, 0] > 0] / totals[totals[:, 0] > 0]
    return per_mask.mean(axis=0) if len(per_mask) else np.zeros(n_classes)


def weights_by_name(class_map_names: Sequence[str], weights: Mapping[str, float]) -> dict[int, float]:
    """Turn ``{"arteriole": 3.0}`` into ``{3: 3.0}`` for :meth:`MaskBank.sample`; typos get a did-you-mean."""
    names = list(class_map_names)
    out: dict[int, float] = {}
    for name, weight in weights.items():
        if name not in names:
            close = difflib.get_close_matches(name, names, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise ValueError(f"class_weights: unknown class {name!r}{hint}; expected one of {names}")
        out[names.index(name)] = float(weight)
    return out


def _dihedral(a: np.ndarray, t: int) -> np.ndarray:
    """One of the 8 flips/rotations (``t`` in 0..7); tissue has no preferred orientation, so all are equally real."""
    a = np.rot90(a, t % 4)
    return a[:, ::-1] if t >= 4 else a


def _fill_nearest(mask: np.ndarray, holes: np.ndarray) -> np.ndarray:
    """Copy into ``holes`` the value of the nearest non-hole pixel (one EDT, no per-pixel loop)."""
    if not holes.any():
        return mask
    idx = ndimage.distance_transform_edt(holes, return_distances=False, return_indices=True)
    return np.where(holes, mask[tuple(idx)], mask)


class MaskBank:
    """Real masks (canvases) plus their per-class connected components (shapes), stored flat for a pickle-free .npz.

    Build with :meth:`from_masks` or :meth:`load`; the constructor takes the packed arrays as stored.
    """

    def __init__(
        self,
        masks: np.ndarray,
        n_classes: int,
        min_area: int,
        shape_class: np.ndarray,
        shape_area: np.ndarray,
        shape_hw: np.ndarray,
        shape_offsets: np.ndarray,
        shape_pixels: np.ndarray,
    ) -> None:
        _check_masks(masks, n_classes)
        self.masks = masks  # uint8 [N, R, R] real masks, 255 kept as delivered
        self.n_classes = int(n_classes)
        self.min_area = int(min_area)  # components smaller than this (pixels) were not kept as shapes
        self.shape_class = shape_class.astype(np.int64)  # [S] class id of each shape
        self.shape_area = shape_area.astype(np.int64)  # [S] pixels
        self.shape_hw = shape_hw.astype(np.int64)  # [S, 2] bbox height, width
        self.shape_offsets = shape_offsets.astype(np.int64)  # [S + 1] start of each patch in shape_pixels
        self.shape_pixels = shape_pixels.astype(bool)  # flat concatenation of the bbox patches
        self.base_shares = shares(masks, n_classes)  # [n_classes] mean pixel share in the real masks
        self.canvases = np.stack([_fill_nearest(m, m == IGNORE_INDEX) for m in masks])  # fully labelled layouts
        self._own = [np.flatnonzero(self.shape_class == k) for k in range(self.n_classes)]
        self._donors = [self._similar_size(k) for k in range(self.n_classes)]

    def _similar_size(self, k: int) -> np.ndarray:
        """Indices of the ``_DONORS`` other-class shapes nearest in log area to class ``k``'s median shape area."""
        log_area = np.log(np.maximum(self.shape_area, 1))
        own = log_area[self._own[k]]
        ref = np.median(own) if len(own) else (np.median(log_area) if len(log_area) else 0.0)
        others = np.flatnonzero(self.shape_class != k)
        return others[np.argsort(np.abs(log_area[others] - ref), kind="stable")[:_DONORS]]

    @property
    def resolution(self) -> int:
        return int(self.masks.shape[1])

    @classmethod
    def from_masks(cls, masks: np.ndarray, n_classes: int, min_area: int = 4) -> MaskBank:
        """Extract the 8-connected components of every class as shapes (class id, bbox patch, area).

        Args:
            masks: ``uint8 [N, R, R]`` class ids, 255 = unlabelled (never a class, never a shape).
            n_classes: Valid ids are ``0..n_classes-1``.
            min_area: Components with fewer pixels are too small to be a shape worth pasting (label noise).
        """
        _check_masks(masks, n_classes)
        if min_area < 1:
            raise ValueError(f"min_area: expected >= 1 pixel, received {min_area}")
        found: list[tuple[int, int, np.ndarray]] = []  # (class id, area, bbox patch)
        for mask in masks:
            for k in np.flatnonzero(np.bincount(mask.ravel(), minlength=256)[:n_classes]):
                labels, n = ndimage.label(mask == k, structure=_EIGHT)
                sizes = np.bincount(labels.ravel(), minlength=n + 1)
                for j, sl in enumerate(ndimage.find_objects(labels), start=1):
                    if sizes[j] >= min_area:
                        found.append((int(k), int(sizes[j]), labels[sl] == j))
        offsets = np.concatenate([[0], np.cumsum([p.size for _, _, p in found], dtype=np.int64)])
        flat = np.concatenate([p.ravel() for _, _, p in found]) if found else np.zeros(0, bool)
        return cls(
            masks,
            n_classes,
            min_area,
            np.asarray([c for c, _, _ in found], np.int64),
            np.asarray([a for _, a, _ in found], np.int64),
            np.asarray([p.shape for _, _, p in found], np.int64).reshape(-1, 2),
            offsets,
            flat,
        )

    def patch(self, j: int) -> np.ndarray:
        """Boolean bbox patch of shape ``j``."""
        h, w = self.shape_hw[j]
        return self.shape_pixels[self.shape_offsets[j] : self.shape_offsets[j + 1]].reshape(h, w)

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write one compressed .npz (no pickles) atomically: a crash never leaves a half-written bank."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
        try:
            with open(tmp, "wb") as f:
                np.savez_compressed(
                    f,
                    format=_FORMAT,
                    n_classes=self.n_classes,
                    min_area=self.min_area,
                    masks=self.masks,
                    shape_class=self.shape_class,
                    shape_area=self.shape_area,
                    shape_hw=self.shape_hw,
                    shape_offsets=self.shape_offsets,
                    shape_pixels=self.shape_pixels,
                )
            os.replace(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)
        return path

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> MaskBank:
        """Read a bank written by :meth:`save` (``allow_pickle=False``)."""
        with np.load(path, allow_pickle=False) as z:
            missing = [k for k in _KEYS if k not in z.files]
            if missing or int(z["format"]) != _FORMAT:
                raise ValueError(
                    f"{path}: expected a mask bank .npz (format {_FORMAT}) with {list(_KEYS)}, missing "
                    f"{missing}. Fix: rebuild it with MaskBank.from_masks(...).save(path)"
                )
            arrays = {k: z[k] for k in _KEYS if k != "format"}
        return cls(arrays.pop("masks"), int(arrays.pop("n_classes")), int(arrays.pop("min_area")), **arrays)

    def _check_weights(self, class_weights: Mapping[int, float]) -> dict[int, float]:
        valid = list(range(self.n_classes))
        out: dict[int, float] = {}
        for k, w in sorted(class_weights.items()):
            if isinstance(k, bool) or not isinstance(k, int | np.integer) or k not in valid:
                raise ValueError(
                    f"class_weights: unknown class id {k!r}; valid ids: {valid}. Fix: use class ids, "
                    f"or weights_by_name(class_map.classes, {{name: weight}})"
                )
            if not np.isfinite(w) or w < 0:
                raise ValueError(
                    f"class_weights[{k}]: expected a finite weight >= 0 (1 = as in the bank), received {w}"
                )
            if w > 1 and self.base_shares[k] == 0:
                raise ValueError(
                    f"class_weights[{k}]: class {k} has no pixels in the bank, so its share cannot be "
                    f"multiplied by {w}. Fix: add masks containing class {k}, or drop it from the weights"
                )
            if w > 1 and len(self._own[k]) == 0 and len(self._donors[k]) == 0:
                raise ValueError(
                    f"class_weights[{k}]: no shapes to paste (bank has {len(self.shape_area)} shapes of "
                    f"area >= min_area={self.min_area}). Fix: rebuild the bank with a smaller min_area"
                )
            out[int(k)] = float(w)
        return out

    def sample(
        self,
        seeds: np.ndarray | Sequence[int],
        class_weights: Mapping[int, float] | None = None,
        dihedral: bool = True,
        *,
        min_shapes: int = 3,
        max_pastes: int = 64,
    ) -> np.ndarray:
        """Generate fully labelled masks with the requested class balance; mask ``i`` depends only on ``seeds[i]``.

        Args:
            seeds: One integer seed per mask.
            class_weights: Class id -> multiple of its bank share (missing: 1.0). ``w > 1`` pastes shapes until the
                mask gained ``(w - 1) x`` the base share (the last shape is kept with probability deficit / gain,
                so the mean share over masks is ``w x`` base); ``w < 1`` removes each component with probability
                ``1 - w`` and fills it from the nearest other class.
            dihedral: Randomly flip/rotate the canvas and each pasted shape.
            min_shapes: Classes with fewer own shapes also paste other classes' shapes, reassigned (module doc).
            max_pastes: Cap on paste attempts per class and mask (bounds the time for unreachable targets).

        Returns:
            ``uint8 [len(seeds), R, R]`` class ids, no 255.
        """
        seeds = np.asarray(seeds)
        if seeds.ndim != 1 or not np.issubdtype(seeds.dtype, np.integer):
            raise ValueError(f"seeds: expected a 1-D sequence of integers, received {seeds.dtype} {seeds.shape}")
        weights = self._check_weights(class_weights or {})
        out = np.empty((len(seeds), self.resolution, self.resolution), np.uint8)
        for i, seed in enumerate(seeds.tolist()):
            out[i] = self._one(np.random.default_rng(seed), weights, dihedral, min_shapes, max_pastes)
        return out

    def _one(
        self, rng: np.random.Generator, weights: dict[int, float], dihedral: bool, min_shapes: int, max_pastes: int
    ) -> np.ndarray:
        canvas = self.canvases[rng.integers(len(self.canvases))]
        canvas = _dihedral(canvas, int(rng.integers(8))).copy() if dihedral else canvas.copy()
        for k, w in weights.items():  # lower first, so a class raised later is not dissolved again
            if w < 1:
                canvas = self._reduce(canvas, k, w, rng)
        for k, w in weights.items():
            if w > 1:
                pool = self._own[k] if len(self._own[k]) >= min_shapes else np.r_[self._own[k], self._donors[k]]
                self._paste(canvas, k, (w - 1) * self.base_shares[k] * canvas.size, pool, rng, dihedral, max_pastes)
        return canvas

    def _reduce(self, canvas: np.ndarray, k: int, w: float, rng: np.random.Generator) -> np.ndarray:
        labels, n = ndimage.label(canvas == k, structure=_EIGHT)
        removed = np.r_[False, rng.random(n) >= w][labels]
        if not removed.any():
            return canvas
        if (canvas == k).all():  # nothing else to grow in: use the bank's most common other class
            return np.where(
                removed, np.argmax(np.where(np.arange(self.n_classes) == k, -1, self.base_shares)), canvas
            ).astype(np.uint8)
        return np.where(removed, _fill_nearest(canvas, canvas == k), canvas)

    def _paste(
        self,
        canvas: np.ndarray,
        k: int,
        deficit: float,
        pool: np.ndarray,
        rng: np.random.Generator,
        dihedral: bool,
        max_pastes: int,
    ) -> None:
        r = canvas.shape[0]
        for _ in range(max_pastes):
            if deficit <= 0:
                return
            patch = self.patch(int(pool[rng.integers(len(pool))]))
            patch = _dihedral(patch, int(rng.integers(8))) if dihedral else patch
            cy, cx = rng.integers(r, size=2)
            top, left = cy - patch.shape[0] // 2, cx - patch.shape[1] // 2  # centre inside, clipped at the border
            y0, y1, x0, x1 = max(top, 0), min(top + patch.shape[0], r), max(left, 0), min(left + patch.shape[1], r)
            sub = patch[y0 - top : y1 - top, x0 - left : x1 - left]
            region = canvas[y0:y1, x0:x1]
            gain = int((sub & (region != k)).sum())
            if gain > deficit and rng.random() >= deficit / gain:
                return
            region[sub] = k
            deficit -= gain
