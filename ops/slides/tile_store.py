"""Kept tiles in a zarr v3 array, one chunk file per tile, written so readers never see half a store.

Workers write tiles straight into a temporary array at their candidate index (no tile travels back to the caller,
so memory stays flat and a dask cluster can write in parallel). ``finalize`` then makes the array dense by renaming
chunk files (cheap: no re-encoding) and swaps the finished folder into place with ``os.replace``.

Two encodings (``TileEncoding``):

- ``jpeg`` (default): each tile is a zarr *shard* whose inner chunks are JPEG streams (``ops.slides.jpeg_codec``).
  The inner chunk edge is the slide's own JPEG tile edge when it divides the tile, so a tile that lines up with the
  slide's tile grid is stored by copying the slide's compressed bytes (no re-encoding, no generation loss); other
  tiles are encoded at ``quality``. Plain ``zarr.open_array`` reads either.
- ``blosc``: lossless Blosc-lz4 RGB, as before (6.2x the bytes of the slides on the demo).
"""

from __future__ import annotations

import os
import shutil
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import zarr
from zarr.codecs import BloscCodec, BytesCodec, ShardingCodec

from ops.slides.jpeg_codec import ColorSpace, JpegCodec, encode_jpeg

TILES_ARRAY = "tiles"
# Chosen by bench/tile_codec.py on the demo slides (scanner stand-in writes JPEG quality 85). Most kept tiles are
# copied as the slide's own bytes; the re-encoded ones are mostly resized to a target mpp, where 95 is the lowest
# quality whose 5th-percentile PSNR vs lossless is >= 40 dB (85: 35 dB, 90: 37 dB), at 0.83x the source's bytes
# for the same slide area, so a store stays smaller than its slide. README, "Compact tile stores", has the table.
DEFAULT_JPEG_QUALITY = 95


@dataclass(frozen=True)
class TileEncoding:
    """How kept tiles are coded in the store.

    Attributes:
        codec: ``jpeg`` (compact; the slide's own JPEG tiles copied where they line up) or ``blosc`` (lossless).
        quality: JPEG quality 1-100 for tiles that are (re-)encoded.
        colorspace: JPEG colour coding, the slide's own when its bytes are copied (``ycbcr`` or ``rgb``).
        inner: JPEG inner chunk edge in pixels (the slide's tile edge, dividing the tile edge); ``None`` = the tile.
    """

    codec: Literal["jpeg", "blosc"] = "jpeg"
    quality: int = DEFAULT_JPEG_QUALITY
    colorspace: ColorSpace = "ycbcr"
    inner: int | None = None

    def __post_init__(self) -> None:
        if self.codec not in ("jpeg", "blosc"):
            raise ValueError(f"tile codec must be 'jpeg' or 'blosc', received {self.codec!r}")
        if not 1 <= self.quality <= 100:
            raise ValueError(f"JPEG quality must be in 1..100, received {self.quality}")


def compressor(name: str = "lz4", level: int = 5) -> BloscCodec:
    """Blosc codec for RGB tiles: lz4 encodes ~1 GB/s so writing stays far cheaper than JPEG decoding."""
    return BloscCodec(cname=name, clevel=level, shuffle="noshuffle")


def create_tile_array(
    path: str | os.PathLike[str], n_slots: int, tile_size: int, encoding: TileEncoding | None = None
) -> zarr.Array:
    """Create ``path`` (a zarr group) with a ``tiles`` array ``[n_slots, tile, tile, 3]`` uint8, one file per tile."""
    encoding = encoding or TileEncoding()
    group = zarr.open_group(str(path), mode="w", zarr_format=3)
    shape, tile_chunk = (max(n_slots, 0), tile_size, tile_size, 3), (1, tile_size, tile_size, 3)
    common = dict(
        shape=shape,
        dtype="uint8",
        fill_value=255,
        dimension_names=("tile", "y", "x", "channel"),
        # "c.<slot>.0.0.0" files in one folder: with "/" every tile costs a folder chain (measured 1.4 ms per tile
        # of mkdir, half the decode of a 512-px tile).
        chunk_key_encoding={"name": "default", "separator": "."},
    )
    if encoding.codec == "blosc":
        return group.create_array(TILES_ARRAY, chunks=tile_chunk, compressors=compressor(), **common)
    inner = encoding.inner or tile_size
    if tile_size % inner:
        raise ValueError(f"JPEG inner chunk edge {inner} must divide the tile edge {tile_size}")
    shard = ShardingCodec(
        chunk_shape=(1, inner, inner, 3),
        codecs=[JpegCodec(quality=encoding.quality, colorspace=encoding.colorspace)],
        index_codecs=[BytesCodec(endian="little")],
        index_location="end",
    )
    return group.create_array(TILES_ARRAY, chunks=tile_chunk, serializer=shard, compressors=None, **common)


def open_tile_array(path: str | os.PathLike[str], mode: str = "r") -> zarr.Array:
    """Open the ``tiles`` array of a tile store."""
    return zarr.open_array(str(Path(path) / TILES_ARRAY), mode=mode)


class TileWriter:
    """Writes tiles straight into their chunk files of a tile array, encoded with the array's own settings.

    Why not ``arr[i] = tile``: zarr 3 routes every write through its asyncio event loop thread; with dask worker
    threads writing concurrently that costs ~8 ms per 512-px tile on 2 cores, more than decoding the tile (~1.3 ms).
    Encoding here gives chunks zarr reads back (byte-identical to zarr's own for Blosc;
    ``tests/ops/slides/test_tile_store.py``), releases the GIL in the codecs, and each chunk file appears atomically
    (temp file, then rename). Only for arrays made by ``create_tile_array`` (one chunk file per tile).
    """

    _SHUFFLE = {"noshuffle": 0, "shuffle": 1, "bitshuffle": 2}

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.array = open_tile_array(path, mode="r+")
        self.root = Path(path) / TILES_ARRAY
        self._root = str(self.root)
        self.tile_shape = self.array.shape[1:]
        codecs = self.array.metadata.codecs
        self.jpeg: JpegCodec | None = None
        if len(codecs) == 1 and isinstance(codecs[0], ShardingCodec) and isinstance(codecs[0].codecs[0], JpegCodec):
            self.jpeg = codecs[0].codecs[0]
            self.inner = int(codecs[0].chunk_shape[1])
            return
        blosc = codecs[-1]
        if len(codecs) != 2 or not isinstance(blosc, BloscCodec) or self.array.metadata.chunks[0] != 1:
            raise ValueError(f"{path}: TileWriter needs a tile store made by create_tile_array, found {codecs}")
        import numcodecs

        self.codec = numcodecs.Blosc(
            cname=blosc.cname.value,
            clevel=blosc.clevel,
            shuffle=self._SHUFFLE[blosc.shuffle.value],
            blocksize=blosc.blocksize,
        )

    @property
    def inner_tiles(self) -> int:
        """JPEG streams per tile edge (``copy`` takes ``inner_tiles**2`` streams); 0 for a lossless store."""
        return self.tile_shape[0] // self.inner if self.jpeg else 0

    def write(self, slot: int, tile: np.ndarray) -> None:
        """Encode ``tile`` (``[T, T, 3]`` uint8) into the store's slot ``slot``."""
        assert tile.shape == self.tile_shape and tile.dtype == np.uint8, f"expected {self.tile_shape} uint8 tile"
        if self.jpeg is None:
            self._put(slot, self.codec.encode(np.ascontiguousarray(tile)))
            return
        t = self.inner
        parts = [
            encode_jpeg(np.ascontiguousarray(tile[y : y + t, x : x + t]), self.jpeg.quality, self.jpeg.colorspace)
            for y in range(0, self.tile_shape[0], t)
            for x in range(0, self.tile_shape[1], t)
        ]
        self.copy(slot, parts)

    def copy(self, slot: int, streams: list[bytes]) -> None:
        """Store already-coded JPEG streams (row-major over the tile's inner chunks) as slot ``slot``, as they are.

        This is the byte passthrough: a slide's own JPEG tiles (with their tables merged in) land in the store
        without being decoded and re-encoded. The streams must decode to the inner chunk size in the store's
        colour coding; ``ops.slides.reader.SlideReader.jpeg_streams`` checks that.
        """
        if self.jpeg is None or len(streams) != self.inner_tiles**2:
            raise ValueError(f"copy needs a JPEG store and {self.inner_tiles**2} streams, received {len(streams)}")
        sizes = np.array([len(s) for s in streams], np.uint64)
        offsets = np.concatenate([[0], np.cumsum(sizes)[:-1]]).astype(np.uint64)
        index = np.stack([offsets, sizes], axis=-1).astype("<u8")  # (inner chunks, 2), row-major = C order
        self._put(slot, b"".join(streams) + index.tobytes())

    def _put(self, slot: int, data: bytes) -> None:
        name = self.array.metadata.encode_chunk_key((int(slot), 0, 0, 0))
        path = os.path.join(self._root, name)
        if "/" in name:  # stores made with the "/" separator
            os.makedirs(os.path.dirname(path), exist_ok=True)
        tmp = os.path.join(os.path.dirname(path), f".{os.path.basename(path)}.{uuid.uuid4().hex[:8]}")
        with open(tmp, "wb") as f:
            f.write(data)
        os.replace(tmp, path)


def store_bytes(path: str | os.PathLike[str]) -> int:
    """Bytes a tile store takes on disk (chunk files and metadata)."""
    return sum(p.stat().st_size for p in Path(path).rglob("*") if p.is_file())


def compact(path: str | os.PathLike[str], kept_slots: np.ndarray) -> zarr.Array:
    """Renumber the written chunks ``kept_slots`` (ascending) to 0..n-1 and shrink the array to n tiles.

    Only valid on a store this process created with one chunk per tile along axis 0.
    """
    arr = open_tile_array(path, mode="r+")
    root = Path(path) / TILES_ARRAY
    kept_slots = np.asarray(kept_slots, dtype=np.int64)
    assert np.all(np.diff(kept_slots) > 0), "kept slots must be strictly ascending"
    for new, old in enumerate(kept_slots.tolist()):
        if new != old:
            src = root / arr.metadata.encode_chunk_key((old, 0, 0, 0))
            dst = root / arr.metadata.encode_chunk_key((new, 0, 0, 0))
            dst.parent.mkdir(parents=True, exist_ok=True)
            os.replace(src, dst)
    arr.resize((len(kept_slots), *arr.shape[1:]))
    return arr


def replace_dir(tmp: str | os.PathLike[str], final: str | os.PathLike[str]) -> None:
    """Move a finished folder into place; an older version is removed only after the new one is in place."""
    tmp, final = Path(tmp), Path(final)
    old = final.with_name(f".{final.name}.old-{uuid.uuid4().hex[:8]}")
    if final.exists():
        os.replace(final, old)
    os.replace(tmp, final)
    shutil.rmtree(old, ignore_errors=True)


def temp_dir_beside(final: str | os.PathLike[str]) -> Path:
    """A fresh hidden temp folder on the same file system as ``final`` (so the last rename is atomic)."""
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = final.with_name(f".{final.name}.tmp-{uuid.uuid4().hex[:8]}")
    tmp.mkdir()
    return tmp
