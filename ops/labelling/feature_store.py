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

Sections: bilinear arithmetic (the store's contract with its readers) → native store writer → HDGAN full-resolution
layout. Reading pixels back, and the minibatch stream a classifier trains on, live in ``ops.labelling.feature_sampler``.
"""

from __future__ import annotations

import math
import os
import shutil
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import zarr
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


def bytes_for_full_maps(output_shape: tuple[int, int], n_features: int) -> int:
    """Size of one HDGAN-layout fp16 memmap, for reporting the saving of the native layout."""
    return int(math.prod(output_shape)) * n_features * 2
