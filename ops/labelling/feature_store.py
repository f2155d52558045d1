"""Generator features per pixel, stored at native block resolution and upsampled only where sampled.

HDGAN upsampled the last five synthesis blocks of every generated image to full resolution and kept the result as
an fp16 memmap: 496 features x 4096^2 pixels = 16.6 GB per image, most of it interpolated copies of a 256-px block.
Here each block is stored once, at the resolution the generator produced it (~32x less), in a chunked, compressed
zarr v3 group; the bilinear upsampling is recomputed on the fly for the few pixels a training batch samples. The
arithmetic matches ``torch.nn.functional.interpolate(mode="bilinear", align_corners=False)`` exactly, so a pixel
classifier trained on sampled features sees the same numbers as one trained on HDGAN's full maps.

Layout of a store (a directory ``<name>.zarr``)::

    zarr.json                  attrs["histofactory"]: channels, resolutions, output_shape, n_images, ...
    block_0/ ... block_<K-1>/  float16 [N_images, C_k, H_k, W_k], chunks (1, C_k, e, e), Blosc-zstd

Sections: bilinear arithmetic → native store (writer, sampler) → HDGAN full-resolution layout → batch stream.
"""

from __future__ import annotations

import math
import os
import shutil
import uuid
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import zarr
import zarr.abc.store
import zarr.storage
from zarr.codecs import BloscCodec

FORMAT_KEY = "histofactory"  # group attribute holding the store description
FORMAT_VERSION = 1
MAX_CHUNK_EDGE = 256  # spatial chunk edge upper bound (pixels of the block's native grid)
MAX_CHUNK_BYTES = 2**21  # keep one fp16 chunk <= 2 MiB, so wide low-res blocks get smaller spatial chunks
FP16_MAX = 65504.0


class FeatureStoreError(ValueError):
    """A feature store is missing, malformed, or was given blocks that do not match its layout."""


# ----------------------------------------------------------------------------------------------------------------
# Bilinear arithmetic (align_corners=False), shared by the native sampler and the HDGAN writer.


def source_index(out_coords: np.ndarray, in_size: int, out_size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Map output-pixel coordinates to the two input neighbours and the weight of the second one.

    This is PyTorch's ``area_pixel_compute_source_index`` for ``align_corners=False`` when ``size`` is given:
    ``src = (dst + 0.5) * in/out - 0.5``, clamped at 0, so edge pixels replicate the border exactly as
    ``F.interpolate`` does.

    Args:
        out_coords: Integer pixel coordinates along one axis at output resolution, any shape.
        in_size: Length of that axis at the block's native resolution.
        out_size: Length of that axis at output resolution.

    Returns:
        ``(i0, i1, w1)``: int64 indices of the lower and upper neighbour and float32 weight of ``i1``
        (the weight of ``i0`` is ``1 - w1``).
    """
    scale = np.float32(in_size / out_size)
    src = (out_coords.astype(np.float32) + np.float32(0.5)) * scale - np.float32(0.5)
    src = np.maximum(src, np.float32(0.0))
    i0 = np.minimum(np.floor(src).astype(np.int64), in_size - 1)
    i1 = np.minimum(i0 + 1, in_size - 1)
    w1 = (src - i0).astype(np.float32)
    return i0, i1, w1


def upsample_rows_from_band(
    band: np.ndarray, band_start: int, h_in: int, out_shape: tuple[int, int], y_start: int, y_stop: int
) -> np.ndarray:
    """Bilinearly upsample output rows ``[y_start, y_stop)`` of one block from a band of its native rows.

    Separable: interpolate along y (two source rows per output row), then along x. Memory is
    ``C x (y_stop - y_start) x W_out`` whatever the output size, which keeps whole-image prediction and the
    HDGAN writer bounded.

    Args:
        band: Native rows ``[band_start, band_start + rows)`` of the block, ``[C, rows, W_in]``.
        band_start: Native row index of ``band[:, 0]``.
        h_in: Native height of the whole block.
        out_shape: Output ``(H_out, W_out)``.
        y_start: First output row.
        y_stop: One past the last output row.

    Returns:
        float32 ``[C, y_stop - y_start, W_out]``.
    """
    _, rows, w_in = band.shape
    h_out, w_out = out_shape
    y0, y1, wy = source_index(np.arange(y_start, y_stop), h_in, h_out)
    x0, x1, wx = source_index(np.arange(w_out), w_in, w_out)
    y0, y1 = y0 - band_start, y1 - band_start
    if y0.min() < 0 or y1.max() >= rows:
        raise FeatureStoreError("row band does not cover the source rows the output rows need")
    band = np.asarray(band, dtype=np.float32)
    mixed = band[:, y0] * (1 - wy)[None, :, None] + band[:, y1] * wy[None, :, None]  # [C, r, W_in]
    return mixed[:, :, x0] * (1 - wx) + mixed[:, :, x1] * wx  # [C, r, W_out]


def source_rows(h_in: int, h_out: int, y_start: int, y_stop: int) -> tuple[int, int]:
    """Native rows ``[lo, hi)`` that output rows ``[y_start, y_stop)`` interpolate from."""
    y0, y1, _ = source_index(np.arange(y_start, y_stop), h_in, h_out)
    return int(y0.min()), int(y1.max()) + 1


def upsample_rows(block: np.ndarray, out_shape: tuple[int, int], y_start: int, y_stop: int) -> np.ndarray:
    """:func:`upsample_rows_from_band` for a block fully in memory ``[C, H_in, W_in]``; float32 [C, r, W_out]."""
    lo, hi = source_rows(block.shape[1], out_shape[0], y_start, y_stop)
    return upsample_rows_from_band(block[:, lo:hi], lo, block.shape[1], out_shape, y_start, y_stop)


def _gather_bilinear(
    slab: np.ndarray, y0: np.ndarray, y1: np.ndarray, wy: np.ndarray, x0: np.ndarray, x1: np.ndarray, wx: np.ndarray
) -> np.ndarray:
    """Blend the 4 neighbours of n points from ``slab [C, h, w]`` (indices local to the slab); returns [n, C]."""
    top = slab[:, y0, x0] * (1 - wx) + slab[:, y0, x1] * wx  # [C, n]
    bottom = slab[:, y1, x0] * (1 - wx) + slab[:, y1, x1] * wx
    return (top * (1 - wy) + bottom * wy).T


# ----------------------------------------------------------------------------------------------------------------
# Native-resolution store.


def _chunk_edge(channels: int, height: int, width: int, max_edge: int = MAX_CHUNK_EDGE) -> tuple[int, int]:
    """Largest spatial chunk edge <= ``max_edge`` (halving) whose fp16 chunk stays under ``MAX_CHUNK_BYTES``."""
    edge = max_edge
    while edge > 16 and channels * edge * edge * 2 > MAX_CHUNK_BYTES:
        edge //= 2
    return min(edge, height), min(edge, width)


def _atomic_replace_dir(tmp: Path, target: Path, overwrite: bool) -> None:
    """Move a finished temp directory into place; an existing target is swapped out only if ``overwrite``."""
    if target.exists():
        if not overwrite:
            raise FeatureStoreError(f"{target} already exists; pass overwrite=True to replace it")
        old = target.with_name(f".{target.name}.{uuid.uuid4().hex[:8]}.old")
        os.replace(target, old)  # directories cannot be replaced by rename while non-empty: swap, then delete
        os.replace(tmp, target)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, target)


class FeatureStoreWriter:
    """Write per-image generator features into a native-resolution zarr store, atomically.

    Everything goes to a hidden temp directory beside ``path``; :meth:`close` renames it into place, so readers
    never see a half-written store and a crash leaves the previous version intact. Use as a context manager: an
    exception inside the ``with`` block discards the temp directory.

    Example:
        >>> with FeatureStoreWriter(path, n_images=2, block_shapes=[(8, 4, 4), (4, 8, 8)]) as w:  # doctest: +SKIP
        ...     for i, blocks in enumerate(generated):
        ...         w.write(i, blocks)
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        n_images: int,  # images the store will hold (all must be written)
        block_shapes: Sequence[tuple[int, int, int]],  # (C_k, H_k, W_k) per synthesis block, any order
        output_shape: tuple[int, int] | None = None,  # (H, W) labels live at; None = largest block's (H, W)
        overwrite: bool = False,  # replace an existing store at close()
        compression_level: int = 3,  # Blosc-zstd level 1..9
        chunk_edge: int = MAX_CHUNK_EDGE,  # max spatial chunk edge (native px); smaller = finer reads
        attrs: dict[str, Any] | None = None,  # extra JSON attrs (generator id, seeds, ...)
    ) -> None:
        self.path = Path(path)
        if n_images < 1:
            raise FeatureStoreError(f"n_images must be >= 1, received {n_images}")
        if chunk_edge < 1:
            raise FeatureStoreError(f"chunk_edge must be >= 1, received {chunk_edge}")
        shapes = [tuple(int(v) for v in s) for s in block_shapes]
        if not shapes or any(len(s) != 3 or min(s) < 1 for s in shapes):
            raise FeatureStoreError(f"block_shapes must be non-empty (C, H, W) triples, received {block_shapes}")
        if output_shape is None:
            output_shape = max((s[1], s[2]) for s in shapes)
        if self.path.exists() and not overwrite:
            raise FeatureStoreError(f"{self.path} already exists; pass overwrite=True to replace it")
        self.n_images = int(n_images)
        self.block_shapes = shapes
        self.output_shape = (int(output_shape[0]), int(output_shape[1]))
        self.overwrite = overwrite
        self._written = np.zeros(self.n_images, bool)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._tmp = self.path.with_name(f".{self.path.name}.{uuid.uuid4().hex[:8]}.tmp")
        self._group = zarr.open_group(zarr.storage.LocalStore(self._tmp), mode="w")
        compressor = BloscCodec(cname="zstd", clevel=compression_level, shuffle="shuffle")
        self._arrays = []
        for k, (c, h, w) in enumerate(shapes):
            ch, cw = _chunk_edge(c, h, w, chunk_edge)
            self._arrays.append(
                self._group.create_array(
                    f"block_{k}",
                    shape=(self.n_images, c, h, w),
                    chunks=(1, c, ch, cw),
                    dtype="float16",
                    compressors=compressor,
                    fill_value=0.0,
                    dimension_names=("image", "channel", "y", "x"),
                )
            )
        self._group.attrs[FORMAT_KEY] = {
            "format_version": FORMAT_VERSION,
            "layout": "native",
            "n_images": self.n_images,
            "channels": [s[0] for s in shapes],
            "resolutions": [[s[1], s[2]] for s in shapes],
            "output_shape": list(self.output_shape),
            "dtype": "float16",
            "interpolation": "bilinear, align_corners=False",
            "complete": False,
        }
        if attrs:
            self._group.attrs["user"] = attrs
        self._closed = False

    def write(self, image_index: int, blocks: Sequence[np.ndarray]) -> None:
        """Store the blocks of one image.

        Args:
            image_index: Row in ``[0, n_images)``.
            blocks: One ``[C_k, H_k, W_k]`` array per block, in the order of ``block_shapes``.

        Raises:
            FeatureStoreError: Wrong index, count or shape, or values that are not finite in float16
                (a diverged generator should fail here, not train a classifier on infinities).
        """
        if self._closed:
            raise FeatureStoreError(f"writer for {self.path} is closed")
        if not 0 <= image_index < self.n_images:
            raise FeatureStoreError(f"image_index {image_index} outside [0, {self.n_images})")
        if len(blocks) != len(self.block_shapes):
            raise FeatureStoreError(f"expected {len(self.block_shapes)} blocks, received {len(blocks)}")
        for k, (block, array) in enumerate(zip(blocks, self._arrays, strict=True)):
            block = np.asarray(block)
            if block.shape != self.block_shapes[k]:
                raise FeatureStoreError(
                    f"block_{k} of image {image_index}: expected shape {self.block_shapes[k]}, received {block.shape}"
                )
            with np.errstate(over="ignore"):  # overflow becomes inf, reported below with the block's name
                half = block.astype(np.float16)
            if not np.isfinite(half).all():
                raise FeatureStoreError(
                    f"block_{k} of image {image_index} has NaN/inf or values beyond float16 range (|x| > {FP16_MAX})"
                )
            array[image_index] = half
        self._written[image_index] = True

    def write_batch(self, first_index: int, blocks: Sequence[Any]) -> None:
        """Store a generator batch: ``blocks[k]`` is ``[B, C_k, H_k, W_k]`` (numpy or CPU torch tensor).

        Images go to rows ``first_index .. first_index + B - 1``; ``synthesis(return_features=True)`` output can
        be passed as is (after ``.detach()``).
        """
        arrays = [np.asarray(b) for b in blocks]
        sizes = {a.shape[0] for a in arrays if a.ndim == 4}
        if len(sizes) != 1 or any(a.ndim != 4 for a in arrays):
            raise FeatureStoreError(
                f"write_batch expects [B, C, H, W] blocks of one batch size, received {[a.shape for a in arrays]}"
            )
        for b in range(sizes.pop()):
            self.write(first_index + b, [a[b] for a in arrays])

    def close(self) -> Path:
        """Check every image was written, mark the store complete and move it into place.

        Returns:
            The final store path.

        Raises:
            FeatureStoreError: Images missing (the temp directory is removed; nothing is published).
        """
        if self._closed:
            return self.path
        missing = np.flatnonzero(~self._written)
        if missing.size:
            self.abort()
            raise FeatureStoreError(
                f"{self.path}: {missing.size} of {self.n_images} images were never written "
                f"(first: {missing[:10].tolist()}); nothing was published"
            )
        meta = dict(self._group.attrs[FORMAT_KEY])
        meta["complete"] = True
        self._group.attrs[FORMAT_KEY] = meta
        _atomic_replace_dir(self._tmp, self.path, self.overwrite)
        self._closed = True
        return self.path

    def abort(self) -> None:
        """Discard everything written so far."""
        self._closed = True
        shutil.rmtree(self._tmp, ignore_errors=True)

    def __enter__(self) -> FeatureStoreWriter:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, *_: object) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()


def write_features(
    path: str | os.PathLike[str],
    images: Sequence[Sequence[np.ndarray]],
    output_shape: tuple[int, int] | None = None,
    overwrite: bool = False,
) -> Path:
    """Write all images' blocks in one call (small sets, tests). Streams through :class:`FeatureStoreWriter`.

    Args:
        path: Store directory to create.
        images: ``images[i]`` is the list of ``[C_k, H_k, W_k]`` blocks of image ``i``.
        output_shape: Label resolution ``(H, W)``; None = largest block's.
        overwrite: Replace an existing store.

    Returns:
        The store path.
    """
    if not images:
        raise FeatureStoreError("images is empty: nothing to write")
    shapes = [tuple(np.shape(b)) for b in images[0]]
    with FeatureStoreWriter(path, len(images), shapes, output_shape, overwrite=overwrite) as writer:
        for i, blocks in enumerate(images):
            writer.write(i, blocks)
    return Path(path)


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


# ----------------------------------------------------------------------------------------------------------------
# HDGAN layout: every block upsampled to full resolution, one fp16 [H, W, F] .npy memmap per image.


def write_upsampled_features(
    path: str | os.PathLike[str],
    blocks: Sequence[np.ndarray],
    output_shape: tuple[int, int] | None = None,
    band_rows: int = 64,
) -> Path:
    """Write one image's features the HDGAN way (fully upsampled fp16 memmap), for comparison and benchmarks.

    The file is filled band by band (memory ~ ``band_rows x W x F``) into a temp file, then renamed.

    Args:
        path: Target ``.npy`` file.
        blocks: ``[C_k, H_k, W_k]`` arrays of one image.
        output_shape: ``(H, W)``; None = largest block's.
        band_rows: Output rows computed per step.

    Returns:
        The written path.
    """
    path = Path(path)
    if output_shape is None:
        output_shape = max((b.shape[1], b.shape[2]) for b in blocks)
    h, w = output_shape
    n_features = sum(b.shape[0] for b in blocks)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        out = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.float16, shape=(h, w, n_features))
        for y in range(0, h, band_rows):
            stop = min(y + band_rows, h)
            offset = 0
            for block in blocks:
                c = block.shape[0]
                out[y:stop, :, offset : offset + c] = upsample_rows(block, (h, w), y, stop).transpose(1, 2, 0)
                offset += c
        out.flush()
        del out
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    return path


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


def bytes_for_full_maps(output_shape: tuple[int, int], n_features: int) -> int:
    """Size of one HDGAN-layout fp16 memmap, for reporting the saving of the native layout."""
    return int(math.prod(output_shape)) * n_features * 2
