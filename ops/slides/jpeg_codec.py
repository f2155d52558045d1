"""A JPEG codec for zarr v3 tile arrays, registered through the ``zarr.codecs`` entry point of this package.

Why JPEG: stored lossless, kept tiles took 6.2x the bytes of the JPEG slides they came from (248 MB for 40 MB of demo
slides); HDGAN, CLAM and slideflow store tiles JPEG-coded for the same reason. Why a zarr codec rather than files:
downstream code (crops, annotations, exports) keeps reading ``zarr.open_array(store)[i]`` unchanged, and because the
codec is registered by entry point (``[project.entry-points."zarr.codecs"]`` in pyproject), plain ``zarr`` reads a
store with nothing but this project installed.

A chunk is one baseline JPEG stream holding a ``[1, H, W, 3]`` uint8 block (one tile, or one inner chunk of a shard
when the store copies a slide's own JPEG tiles; see ``ops.slides.tile_store``). ``colorspace`` says how the stream
codes its pixels: ``ycbcr`` (JFIF, what every encoder writes by default) or ``rgb`` (Aperio-style streams that code
R, G, B without a colour transform); the tile writer picks the slide's own so copied bytes decode as the slide does.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

import imagecodecs
import numpy as np
from zarr.abc.codec import ArrayBytesCodec
from zarr.core.buffer import Buffer, NDBuffer
from zarr.core.common import JSON, parse_named_configuration

if TYPE_CHECKING:
    from typing import Self

    from zarr.core.array_spec import ArraySpec
    from zarr.core.chunk_grids import ChunkGrid
    from zarr.core.dtype.wrapper import TBaseDType, TBaseScalar, ZDType

CODEC_NAME = "histofactory.jpeg"
ColorSpace = Literal["ycbcr", "rgb"]


def encode_jpeg(tile: np.ndarray, quality: int, colorspace: ColorSpace = "ycbcr") -> bytes:
    """Encode an ``[H, W, 3]`` uint8 tile as a baseline JPEG stream (4:2:0 for ycbcr, as scanners write)."""
    assert tile.ndim == 3 and tile.shape[-1] == 3 and tile.dtype == np.uint8, f"expected [H, W, 3] uint8, {tile.shape}"
    if colorspace == "rgb":
        return imagecodecs.jpeg8_encode(tile, level=quality, colorspace="RGB", outcolorspace="RGB")
    return imagecodecs.jpeg8_encode(tile, level=quality, subsampling="420")


def decode_jpeg(data: bytes, colorspace: ColorSpace = "ycbcr") -> np.ndarray:
    """Decode a JPEG stream to ``[H, W, 3]`` uint8 RGB."""
    if colorspace == "rgb":
        return imagecodecs.jpeg8_decode(data, colorspace="RGB", outcolorspace="RGB")
    return imagecodecs.jpeg8_decode(data, outcolorspace="RGB")


@dataclass(frozen=True)
class JpegCodec(ArrayBytesCodec):
    """Array-to-bytes codec: a ``[1, H, W, 3]`` uint8 chunk <-> one JPEG stream.

    Attributes:
        quality: libjpeg quality 1-100 used when encoding (copied slide tiles keep the slide's own quality).
        colorspace: How the streams code pixels: ``ycbcr`` (JFIF) or ``rgb`` (no colour transform).
    """

    is_fixed_size = False

    quality: int
    colorspace: ColorSpace

    def __init__(self, *, quality: int = 90, colorspace: ColorSpace = "ycbcr") -> None:
        if not 1 <= int(quality) <= 100:
            raise ValueError(f"JPEG quality must be in 1..100, received {quality}")
        if colorspace not in ("ycbcr", "rgb"):
            raise ValueError(f"JPEG colorspace must be 'ycbcr' or 'rgb', received {colorspace!r}")
        object.__setattr__(self, "quality", int(quality))
        object.__setattr__(self, "colorspace", colorspace)

    @classmethod
    def from_dict(cls, data: dict[str, JSON]) -> Self:
        _, config = parse_named_configuration(data, CODEC_NAME, require_configuration=False)
        return cls(**(config or {}))  # type: ignore[arg-type]

    def to_dict(self) -> dict[str, JSON]:
        return {"name": CODEC_NAME, "configuration": {"quality": self.quality, "colorspace": self.colorspace}}

    def validate(
        self, *, shape: tuple[int, ...], dtype: ZDType[TBaseDType, TBaseScalar], chunk_grid: ChunkGrid
    ) -> None:
        if dtype.to_native_dtype() != np.dtype("uint8") or len(shape) != 4 or shape[-1] != 3:
            raise ValueError(f"{CODEC_NAME} stores [tile, y, x, 3] uint8 arrays, received {shape} {dtype}")

    def _decode_sync(self, chunk_bytes: Buffer, chunk_spec: ArraySpec) -> NDBuffer:
        rgb = decode_jpeg(chunk_bytes.to_bytes(), self.colorspace)
        if rgb.shape != chunk_spec.shape[1:]:
            raise ValueError(f"JPEG chunk decodes to {rgb.shape}, the array expects {chunk_spec.shape[1:]}")
        return chunk_spec.prototype.nd_buffer.from_ndarray_like(rgb.reshape(chunk_spec.shape))

    async def _decode_single(self, chunk_bytes: Buffer, chunk_spec: ArraySpec) -> NDBuffer:
        return self._decode_sync(chunk_bytes, chunk_spec)

    def _encode_sync(self, chunk_array: NDBuffer, chunk_spec: ArraySpec) -> Buffer | None:
        block = np.asarray(chunk_array.as_ndarray_like())
        data = encode_jpeg(np.ascontiguousarray(block.reshape(block.shape[-3:])), self.quality, self.colorspace)
        return chunk_spec.prototype.buffer.from_bytes(data)

    async def _encode_single(self, chunk_array: NDBuffer, chunk_spec: ArraySpec) -> Buffer | None:
        return self._encode_sync(chunk_array, chunk_spec)

    def compute_encoded_size(self, input_byte_length: int, chunk_spec: ArraySpec) -> int:
        raise NotImplementedError("JPEG chunks have no fixed encoded size")
