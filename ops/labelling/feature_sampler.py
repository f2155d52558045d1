"""Reading generator features back per pixel, and the labelled-pixel minibatches a pixel classifier trains on.

A :class:`FeatureSampler` reads a native-resolution store (``ops.labelling.feature_store``) and upsamples only the
pixels asked for; :class:`UpsampledFeatureSampler` reads HDGAN's full-resolution memmaps, for like-for-like
benchmarks. Both are a :class:`PixelSource`, which is all :class:`BatchStream` needs: memory stays bounded by the
batch, not the dataset.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Protocol

import numpy as np
import zarr
import zarr.abc.store
import zarr.storage

from ops.labelling.feature_store import (
    FORMAT_KEY,
    FeatureStoreError,
    source_index,
    source_rows,
    upsample_rows_from_band,
)


def _gather_bilinear(
    slab: np.ndarray, y0: np.ndarray, y1: np.ndarray, wy: np.ndarray, x0: np.ndarray, x1: np.ndarray, wx: np.ndarray
) -> np.ndarray:
    """Blend the 4 neighbours of n points from ``slab [C, h, w]`` (indices local to the slab); returns [n, C]."""
    top = slab[:, y0, x0] * (1 - wx) + slab[:, y0, x1] * wx  # [C, n]
    bottom = slab[:, y1, x0] * (1 - wx) + slab[:, y1, x1] * wx
    return (top * (1 - wy) + bottom * wy).T


class PixelSource(Protocol):
    """Anything that returns per-pixel features for (image, y, x) triples; both store layouts implement it."""

    output_shape: tuple[int, int]
    n_features: int
    n_images: int

    def sample(self, image_index: np.ndarray | int, ys: np.ndarray, xs: np.ndarray) -> np.ndarray: ...


class FeatureSampler:
    """Read features of chosen pixels from a native-resolution store, upsampling on the fly.

    Per call and image, each block is read once, restricted to the bounding box of the neighbours the sampled
    pixels need; zarr fetches only the chunks that box touches, and other images are not read at all.

    Args:
        store: Store directory, or any zarr store (e.g. a wrapper that counts bytes read).
    """

    def __init__(self, store: str | os.PathLike[str] | zarr.abc.store.Store) -> None:
        if isinstance(store, (str, os.PathLike)):
            if not Path(store).is_dir():
                raise FeatureStoreError(f"feature store {store} does not exist (expected a directory)")
            store = zarr.storage.LocalStore(Path(store), read_only=True)
        try:
            self._group = zarr.open_group(store, mode="r")
        except (FileNotFoundError, ValueError) as exc:
            raise FeatureStoreError(f"{store} is not a zarr group: {exc}") from exc
        meta = self._group.attrs.get(FORMAT_KEY)
        if not isinstance(meta, dict) or meta.get("layout") != "native":
            raise FeatureStoreError(f"{store} is not a histofactory native feature store (attrs['{FORMAT_KEY}'])")
        if not meta.get("complete", False):
            raise FeatureStoreError(f"{store} is incomplete (writer never closed)")
        self.meta = meta
        self.channels: list[int] = [int(c) for c in meta["channels"]]
        self.resolutions: list[tuple[int, int]] = [(int(h), int(w)) for h, w in meta["resolutions"]]
        self.output_shape: tuple[int, int] = (int(meta["output_shape"][0]), int(meta["output_shape"][1]))
        self.n_images: int = int(meta["n_images"])
        self.n_features: int = sum(self.channels)
        self._arrays = [self._group[f"block_{k}"] for k in range(len(self.channels))]
        offsets = np.concatenate([[0], np.cumsum(self.channels)])
        self.feature_slices: list[slice] = [
            slice(int(a), int(b)) for a, b in zip(offsets[:-1], offsets[1:], strict=True)
        ]

    def _check(self, image_index: np.ndarray, ys: np.ndarray, xs: np.ndarray) -> None:
        h, w = self.output_shape
        if not (ys.shape == xs.shape == image_index.shape and ys.ndim == 1):
            raise FeatureStoreError(
                f"image_index, ys, xs must be 1-D of equal length, received {image_index.shape}, {ys.shape}, {xs.shape}"
            )
        if ys.size and (ys.min() < 0 or ys.max() >= h or xs.min() < 0 or xs.max() >= w):
            raise FeatureStoreError(f"pixel coordinates outside the output grid {h}x{w}")
        if image_index.size and (image_index.min() < 0 or image_index.max() >= self.n_images):
            raise FeatureStoreError(f"image index outside [0, {self.n_images})")

    def sample(self, image_index: np.ndarray | int, ys: np.ndarray, xs: np.ndarray) -> np.ndarray:
        """Features of pixels ``(image_index[j], ys[j], xs[j])`` at output resolution.

        Args:
            image_index: int or int array ``[n]``.
            ys: Row coordinates ``[n]`` at output resolution.
            xs: Column coordinates ``[n]``.

        Returns:
            float32 ``[n, n_features]``, blocks concatenated in store order, rows in input order.
        """
        ys, xs = np.asarray(ys, np.int64).ravel(), np.asarray(xs, np.int64).ravel()
        image_index = np.broadcast_to(np.asarray(image_index, np.int64), ys.shape).ravel()
        self._check(image_index, ys, xs)
        out = np.empty((ys.size, self.n_features), np.float32)
        h_out, w_out = self.output_shape
        for img in np.unique(image_index):
            rows = np.flatnonzero(image_index == img)
            for array, (h_in, w_in), sl in zip(self._arrays, self.resolutions, self.feature_slices, strict=True):
                y0, y1, wy = source_index(ys[rows], h_in, h_out)
                x0, x1, wx = source_index(xs[rows], w_in, w_out)
                ya, yb, xa, xb = int(y0.min()), int(y1.max()) + 1, int(x0.min()), int(x1.max()) + 1
                slab = np.asarray(array[int(img), :, ya:yb, xa:xb], dtype=np.float32)  # [C, h, w] box only
                out[rows, sl] = _gather_bilinear(slab, y0 - ya, y1 - ya, wy, x0 - xa, x1 - xa, wx)
        return out

    def read_rows(self, image_index: int, y_start: int, y_stop: int) -> np.ndarray:
        """Full-resolution features of a band of output rows (whole-image prediction, band by band).

        Args:
            image_index: Image to read.
            y_start: First output row.
            y_stop: One past the last output row.

        Returns:
            float32 ``[y_stop - y_start, W_out, n_features]``.
        """
        h_out, w_out = self.output_shape
        if not 0 <= y_start < y_stop <= h_out:
            raise FeatureStoreError(f"row band [{y_start}, {y_stop}) outside [0, {h_out})")
        out = np.empty((y_stop - y_start, w_out, self.n_features), np.float32)
        for array, (h_in, _), sl in zip(self._arrays, self.resolutions, self.feature_slices, strict=True):
            lo, hi = source_rows(h_in, h_out, y_start, y_stop)
            band = array[int(image_index), :, lo:hi]  # [C, rows needed, W_in]: only these rows' chunks are read
            out[:, :, sl] = upsample_rows_from_band(band, lo, h_in, (h_out, w_out), y_start, y_stop).transpose(1, 2, 0)
        return out

    def iter_row_bands(self, image_index: int, band_rows: int = 64) -> Iterator[tuple[int, np.ndarray]]:
        """Yield ``(y_start, features [rows, W, F])`` covering the image, memory bounded by ``band_rows``."""
        for y in range(0, self.output_shape[0], band_rows):
            yield y, self.read_rows(image_index, y, min(y + band_rows, self.output_shape[0]))


class UpsampledFeatureSampler:
    """:class:`PixelSource` over HDGAN-layout memmaps (one ``.npy`` per image), for like-for-like benchmarks."""

    def __init__(self, paths: Sequence[str | os.PathLike[str]]) -> None:
        if not paths:
            raise FeatureStoreError("paths is empty")
        self._maps = [np.load(p, mmap_mode="r") for p in paths]
        shapes = {m.shape for m in self._maps}
        if len(shapes) != 1:
            raise FeatureStoreError(f"memmaps differ in shape: {sorted(shapes)}")
        h, w, f = self._maps[0].shape
        self.output_shape = (h, w)
        self.n_features = f
        self.n_images = len(self._maps)

    def sample(self, image_index: np.ndarray | int, ys: np.ndarray, xs: np.ndarray) -> np.ndarray:
        """Same contract as :meth:`FeatureSampler.sample`."""
        ys, xs = np.asarray(ys, np.int64).ravel(), np.asarray(xs, np.int64).ravel()
        image_index = np.broadcast_to(np.asarray(image_index, np.int64), ys.shape).ravel()
        out = np.empty((ys.size, self.n_features), np.float32)
        for img in np.unique(image_index):
            rows = np.flatnonzero(image_index == img)
            out[rows] = self._maps[int(img)][ys[rows], xs[rows]]
        return out


# ----------------------------------------------------------------------------------------------------------------
# Minibatches of labelled pixels.


class BatchStream:
    """Iterable of ``(features [B, F] float32, labels [B] int64)`` pixel minibatches drawn from labelled images.

    Memory is bounded by the batch, not the dataset: per batch only the sampled pixels' features are read (see
    :class:`FeatureSampler`), and label masks are only indexed (pass ``np.load(..., mmap_mode="r")`` arrays for
    large images). Class-weighted sampling (HDGAN) is rejection sampling on label lookups, which are cheap,
    so no per-class pixel index lists (4 bytes per pixel) are ever built.

    Each ``iter()`` is one epoch of ``batches_per_epoch`` batches. Epochs differ (seeded by ``(seed, epoch)``)
    unless ``fixed=True``, which replays the same batches every time — what a validation stream needs.

    Args:
        source: Feature source (native store or HDGAN memmaps).
        labels: ``labels[j]`` is the ``[H, W]`` class-id mask of image ``image_indices[j]`` at output resolution.
        image_indices: Store rows the masks belong to; None = ``range(len(labels))``.
        batch_size: Pixels per batch.
        batches_per_epoch: Batches yielded per iteration.
        n_classes: Number of classes; labels ``>= n_classes`` other than ``ignore_index`` are an error.
        class_balance: 0 = natural class frequencies; 1 = every class equally often; 0.5 = weights ~ 1/sqrt(freq).
        ignore_index: Label value never sampled (unannotated pixels).
        seed: Base seed.
        fixed: Replay identical batches on every iteration.
        window: If set, each batch samples only inside one random ``window x window`` (output px) square in each
            of ``windows_per_batch`` distinct images. Uniform sampling touches every chunk of every image each batch
            (at 4096^2 that decodes the whole store per batch); windows bound the bytes decoded per batch at the
            cost of less varied batches. None = uniform over all pixels.
        windows_per_batch: Images (one window each) per batch when ``window`` is set.
    """

    def __init__(
        self,
        source: PixelSource,
        labels: Sequence[np.ndarray],
        image_indices: Sequence[int] | None = None,
        batch_size: int = 4096,
        batches_per_epoch: int = 100,
        n_classes: int | None = None,
        class_balance: float = 0.0,
        ignore_index: int = 255,
        seed: int = 0,
        fixed: bool = False,
        window: int | None = None,
        windows_per_batch: int = 4,
    ) -> None:
        if image_indices is None:
            image_indices = range(len(labels))
        self.image_indices = np.asarray(list(image_indices), np.int64)
        if len(labels) != self.image_indices.size or not len(labels):
            raise FeatureStoreError(
                f"expected one label mask per image index, received {len(labels)} masks for "
                f"{self.image_indices.size} indices"
            )
        if self.image_indices.size and (self.image_indices.min() < 0 or self.image_indices.max() >= source.n_images):
            raise FeatureStoreError(
                f"image_indices must lie in [0, {source.n_images}) (images in the store), received "
                f"{self.image_indices.min()}..{self.image_indices.max()}"
            )
        if batch_size < 2:
            raise FeatureStoreError(f"batch_size must be >= 2 (BatchNorm needs it), received {batch_size}")
        if not 0.0 <= class_balance <= 1.0:
            raise FeatureStoreError(f"class_balance must be in [0, 1], received {class_balance}")
        for j, mask in enumerate(labels):
            if tuple(mask.shape) != tuple(source.output_shape):
                raise FeatureStoreError(
                    f"label mask {j} (image {self.image_indices[j]}) has shape {tuple(mask.shape)}, "
                    f"expected the feature output shape {tuple(source.output_shape)}"
                )
        self.source = source
        self.labels = labels
        self.batch_size = int(batch_size)
        self.batches_per_epoch = int(batches_per_epoch)
        self.ignore_index = int(ignore_index)
        self.seed = seed
        self.fixed = fixed
        h, w = source.output_shape
        if window is not None and not 1 <= window <= min(h, w):
            raise FeatureStoreError(f"window must be in [1, {min(h, w)}] output pixels, received {window}")
        if windows_per_batch < 1:
            raise FeatureStoreError(f"windows_per_batch must be >= 1, received {windows_per_batch}")
        self.window = window
        self.windows_per_batch = int(windows_per_batch)
        self._epoch = 0
        counts = []
        for j, mask in enumerate(labels):  # one streamed pass per mask
            if not np.issubdtype(mask.dtype, np.integer):
                raise FeatureStoreError(f"label mask {j} has dtype {mask.dtype}, expected integer class ids")
            count = np.bincount(np.asarray(mask).ravel().astype(np.int64), minlength=256)
            if count.size > 256:
                raise FeatureStoreError(f"label mask {j} has class ids > 255 (max {count.size - 1})")
            counts.append(count)
        self.counts = np.stack(counts)  # [n_images, 256] pixel counts per label value
        valid = self.counts.copy()
        valid[:, self.ignore_index] = 0
        present = np.flatnonzero(valid.sum(0))
        if n_classes is None:
            n_classes = int(present.max()) + 1 if present.size else 0
        bad = present[present >= n_classes]
        if bad.size:
            raise FeatureStoreError(f"labels contain class ids {bad.tolist()} >= n_classes={n_classes}")
        if not present.size:
            raise FeatureStoreError("label masks contain no labelled pixels (all ignore_index)")
        self.n_classes = int(n_classes)
        self.class_counts = valid[:, : self.n_classes].sum(0)
        freq = self.class_counts / self.class_counts.sum()
        # Acceptance probability per label value: w_c / max w over present classes, w_c = freq_c ** -balance.
        weights = np.zeros(256)
        with np.errstate(divide="ignore"):
            weights[: self.n_classes] = np.where(freq > 0, freq ** -float(class_balance), 0.0)
        self.acceptance = weights / weights.max()
        self.expected_acceptance = float((freq * self.acceptance[: self.n_classes]).sum())
        self.labelled_share = float(valid.sum() / self.counts.sum())

    def __len__(self) -> int:
        return self.batches_per_epoch

    def _draw_windows(self, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Top-left corners of one window in each of ``windows_per_batch`` distinct images (mask indices)."""
        h, w = self.source.output_shape
        n_win = min(self.windows_per_batch, len(self.labels))
        win_img = rng.choice(len(self.labels), size=n_win, replace=False)
        return win_img, rng.integers(0, h - self.window + 1, n_win), rng.integers(0, w - self.window + 1, n_win)

    def _draw(self, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Draw one batch of (store image, y, x, label) by vectorised rejection rounds."""
        h, w = self.source.output_shape
        need = self.batch_size
        parts: list[tuple[np.ndarray, ...]] = []
        rate = max(self.expected_acceptance * self.labelled_share, 1e-4)  # candidates per accepted pixel
        windows = self._draw_windows(rng) if self.window is not None else None
        for _ in range(1000):
            n = int(min(max(need / rate * 1.2, 64), 1 << 20))
            if windows is None:  # uniform image and pixel: every labelled pixel equally likely
                j = rng.integers(0, len(self.labels), n)
                ys, xs = rng.integers(0, h, n), rng.integers(0, w, n)
            else:
                win_img, win_y, win_x = windows
                k = rng.integers(0, win_img.size, n)
                j = win_img[k]
                ys = win_y[k] + rng.integers(0, self.window, n)
                xs = win_x[k] + rng.integers(0, self.window, n)
            lab = np.empty(n, np.int64)
            for jj in np.unique(j):  # loop over images, not pixels
                sel = np.flatnonzero(j == jj)
                lab[sel] = np.asarray(self.labels[jj])[ys[sel], xs[sel]]
            keep = rng.random(n) < self.acceptance[lab]
            keep = np.flatnonzero(keep)[:need]
            parts.append((j[keep], ys[keep], xs[keep], lab[keep]))
            need -= keep.size
            if need == 0:
                break
            if windows is not None and keep.size == 0:  # windows with nothing to sample (e.g. unannotated)
                windows = self._draw_windows(rng)
        else:
            raise FeatureStoreError(
                "could not fill a batch by rejection sampling (too few labelled pixels in reach); check labels, "
                "class_balance, or enlarge window / windows_per_batch"
            )
        j, ys, xs, lab = (np.concatenate(p) for p in zip(*parts, strict=True))
        return self.image_indices[j], ys, xs, lab

    def __iter__(self) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        epoch = 0 if self.fixed else self._epoch
        if not self.fixed:
            self._epoch += 1
        rng = np.random.default_rng([self.seed, epoch])
        for _ in range(self.batches_per_epoch):
            images, ys, xs, lab = self._draw(rng)
            yield self.source.sample(images, ys, xs), lab
