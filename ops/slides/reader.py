"""Open whole-slide images through one read API, whatever the file.

``open_slide`` dispatches: openslide first (every vendor format it knows), tifffile for TIFFs openslide rejects.
For TIFF-family slides whose levels are tiled pages, ``read_region`` can also decode the JPEG tiles directly through
tifffile's zarr view, skipping openslide's conversion of every tile to premultiplied RGBA (measured 4-6x slower than
the raw decode on these machines; see ``bench/tiling.py``).

Units are explicit: ``level`` is a pyramid index, coordinates passed to ``read_region`` are level-0 pixels (as in
openslide), sizes are pixels at the requested level, and ``mpp`` is microns per level-0 pixel.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import numpy as np

if TYPE_CHECKING:
    from ops.slides.jpeg_codec import ColorSpace

Decoder = Literal["auto", "openslide", "tifffile"]

TIFF_SUFFIXES = (".svs", ".tif", ".tiff", ".bif", ".ndpi", ".scn", ".qptiff", ".ome.tif", ".ome.tiff")


class SlideError(ValueError):
    """A slide cannot be used; the message names the file, the problem and the fix."""


@dataclass(frozen=True)
class SlideInfo:
    """What the tiler needs to know about a slide, independent of the backend."""

    path: str
    vendor: str
    level_dimensions: tuple[tuple[int, int], ...]  # (width, height) per level
    level_downsamples: tuple[float, ...]
    mpp: float | None  # microns per level-0 pixel, None when the file does not say
    objective_power: float | None


class SlideReader:
    """A slide opened for reading. Not picklable (native handles): open one per worker process or thread."""

    def __init__(
        self, path: str | os.PathLike[str], mpp_override: float | None = None, decoder: Decoder = "auto"
    ) -> None:
        self.path = str(path)
        _check_file(self.path)
        self._osr = None
        self._tiff = None
        self._levels: list = []  # tiled TIFF pages by level (or a zarr view of a stripped image), for direct decoding
        try:
            import openslide

            self._osr = openslide.OpenSlide(self.path)
        except Exception as exc:  # openslide raises several types for "not a slide"; we re-raise below
            if not self.path.lower().endswith(TIFF_SUFFIXES):
                raise SlideError(
                    f"{self.path}: not a readable slide ({type(exc).__name__}: {exc}). Expected a whole-slide image "
                    "that openslide or tifffile can open (e.g. .svs, .tiff, .ndpi, .mrxs); remove or replace the file."
                ) from exc
        if decoder != "openslide":
            self._open_tiff(required=self._osr is None or decoder == "tifffile")
        self.info = self._make_info(mpp_override)
        self.decoder: str = "tifffile" if self._levels and (decoder != "openslide") else "openslide"
        if self._osr is None:
            self.decoder = "tifffile"

    # -- opening ---------------------------------------------------------------------------------------------------
    def _open_tiff(self, required: bool) -> None:
        """Map pyramid levels to tiled TIFF pages; raise only when tifffile is the sole way in."""
        import tifffile
        import zarr

        try:
            self._tiff = tifffile.TiffFile(self.path)
            # tifffile silently replaces a 0 width/height by the tile size; the tags say what the file records.
            sizes = [(p.tags.valueof(256, 1), p.tags.valueof(257, 1)) for p in self._tiff.pages]
            empty = [i for i, (w, h) in enumerate(sizes) if not w or not h]
            if empty:
                w, h = sizes[empty[0]]
                raise SlideError(
                    f"{self.path}: level {empty[0]} of the image pyramid (TIFF page {empty[0]}) is "
                    f"{w}x{h} pixels (empty); the file's structure is damaged. Re-export "
                    "the slide from the scanner software (or copy it again from the archive) and add it again."
                )
            pages = [p for p in self._tiff.pages if p.is_tiled and p.ndim == 3 and p.shape[-1] in (3, 4)]
            if self._osr is not None:
                want = list(self._osr.level_dimensions)
                by_size = {(p.shape[1], p.shape[0]): p for p in pages}
                if not all(d in by_size for d in want):
                    self._levels = []
                    return
                pages = [by_size[d] for d in want]
            else:
                pages = sorted(pages, key=lambda p: -p.shape[0] * p.shape[1])
                if not pages:  # a flat (stripped) TIFF: one level, decoded through tifffile's series
                    series = self._tiff.series[0]
                    if series.ndim != 3 or series.shape[-1] not in (3, 4):
                        raise SlideError(
                            f"{self.path}: no image pyramid and no readable level: the only image has shape "
                            f"{series.shape}, where a slide is RGB (height x width x 3). This is no slide scan (a "
                            "mask or a grey-level export?); add the original slide file from the scanner instead."
                        )
                    self._levels = [zarr.open(series.aszarr(level=0), mode="r")]
                    return
            _check_not_truncated(self.path, pages)
            self._levels = pages
        except SlideError:
            raise
        except Exception as exc:
            self._levels = []
            if required:
                raise SlideError(
                    f"{self.path}: cannot be read as a slide ({type(exc).__name__}: {exc}). The file may be "
                    "truncated or corrupt; re-export or re-copy it from the scanner."
                ) from exc

    def _make_info(self, mpp_override: float | None) -> SlideInfo:
        if self._osr is not None:
            props = self._osr.properties
            # openslide leaves out an mpp it cannot parse (e.g. "nan"); the vendor's raw field still says what the
            # file records, so validation can refuse it instead of tiling with no resolution.
            mpp = _float(props.get("openslide.mpp-x") or props.get("aperio.MPP"))
            info = SlideInfo(
                path=self.path,
                vendor=props.get("openslide.vendor", "unknown"),
                level_dimensions=tuple(tuple(d) for d in self._osr.level_dimensions),
                level_downsamples=tuple(float(d) for d in self._osr.level_downsamples),
                mpp=mpp,
                objective_power=_float(props.get("openslide.objective-power")),
            )
        else:
            dims = tuple((int(a.shape[1]), int(a.shape[0])) for a in self._levels)
            info = SlideInfo(
                path=self.path,
                vendor="tifffile",
                level_dimensions=dims,
                level_downsamples=tuple(dims[0][0] / d[0] for d in dims),
                mpp=_tiff_mpp(self._tiff),
                objective_power=None,
            )
        if mpp_override is not None:
            if mpp_override <= 0:
                raise SlideError(f"{self.path}: mpp_override must be > 0 microns/pixel, received {mpp_override}.")
            info = SlideInfo(**{**info.__dict__, "mpp": float(mpp_override)})
        return info

    # -- reading ---------------------------------------------------------------------------------------------------
    def read_region(self, x: int, y: int, level: int, width: int, height: int) -> np.ndarray:
        """Read an RGB uint8 ``[height, width, 3]`` region; (x, y) in level-0 pixels, size in level pixels.

        Areas outside the slide come back white, as openslide renders them transparent-over-white.
        """
        if self.decoder == "tifffile":
            return self._read_tiff(x, y, level, width, height)
        region = np.asarray(self._osr.read_region((int(x), int(y)), int(level), (int(width), int(height))))
        rgb, alpha = region[..., :3], region[..., 3:4]
        if alpha.min() == 255:
            return np.ascontiguousarray(rgb)
        # openslide returns premultiplied RGBA; composite over white like a viewer does
        return (rgb.astype(np.uint16) + (255 - alpha.astype(np.uint16))).clip(0, 255).astype(np.uint8)

    def _read_tiff(self, x: int, y: int, level: int, width: int, height: int) -> np.ndarray:
        src = self._levels[level]
        ds = self.info.level_downsamples[level]
        lx, ly = int(round(x / ds)), int(round(y / ds))
        out = np.full((height, width, 3), 255, np.uint8)
        h, w = src.shape[:2]
        x0, y0, x1, y1 = max(lx, 0), max(ly, 0), min(lx + width, w), min(ly + height, h)
        if x1 <= x0 or y1 <= y0:
            return out
        if not hasattr(src, "dataoffsets"):  # a zarr view of a stripped image
            out[y0 - ly : y1 - ly, x0 - lx : x1 - lx] = src[y0:y1, x0:x1, :3]
            return out
        # Tiled page: decode exactly the TIFF tiles the region touches, straight from their bytes.
        th, tw = src.tilelength, src.tilewidth
        across = -(-w // tw)
        fh, decode = self._tiff.filehandle, src.decode
        for ty in range(y0 // th, (y1 - 1) // th + 1):
            for tx in range(x0 // tw, (x1 - 1) // tw + 1):
                index = ty * across + tx
                if not src.databytecounts[index]:
                    continue  # a sparse (empty) tile stays white
                fh.seek(src.dataoffsets[index])
                tile = decode(fh.read(src.databytecounts[index]), index, jpegtables=src.jpegtables)[0][0]
                sy0, sx0 = max(y0, ty * th), max(x0, tx * tw)
                sy1, sx1 = min(y1, (ty + 1) * th), min(x1, (tx + 1) * tw)
                out[sy0 - ly : sy1 - ly, sx0 - lx : sx1 - lx] = tile[
                    sy0 - ty * th : sy1 - ty * th, sx0 - tx * tw : sx1 - tx * tw, :3
                ]
        return out

    def jpeg_layout(self, level: int) -> tuple[int, ColorSpace] | None:
        """``(tile edge, colour coding)`` of ``level``'s JPEG tiles when their bytes can be copied as they are.

        ``None`` unless the level is a tiled TIFF page of square 8-bit RGB JPEG tiles read directly (not through
        openslide): only then is a stored tile's stream exactly what decoding the slide would decode.
        """
        if self.decoder != "tifffile" or not 0 <= level < len(self._levels):
            return None
        page = self._levels[level]
        if not hasattr(page, "dataoffsets") or page.compression != 7 or page.tilewidth != page.tilelength:
            return None
        if page.photometric not in (2, 6) or page.planarconfig != 1 or page.extrasamples or page.shape[-1] != 3:
            return None
        # As tifffile decodes them: photometric RGB without a JFIF marker means R, G, B coded with no colour
        # transform (Aperio); everything else is YCbCr.
        return int(page.tilewidth), ("rgb" if page.photometric == 2 and not page.is_jfif else "ycbcr")

    def jpeg_streams(self, x: int, y: int, level: int, size: int) -> list[bytes] | None:
        """The slide's own JPEG tiles covering a ``size``-px square region, as standalone streams (row-major).

        Returns ``None`` unless the region is exactly a block of whole, non-empty tiles inside the level (then the
        tiler decodes and re-encodes instead). (x, y) are level-0 pixels, ``size`` is in level pixels. TIFF JPEG
        tiles usually share one quantisation/Huffman table block (``JPEGTables``); it is merged into each stream so
        any JPEG decoder reads it alone.
        """
        layout = self.jpeg_layout(level)
        if layout is None:
            return None
        edge = layout[0]
        page = self._levels[level]
        ds = self.info.level_downsamples[level]
        lx, ly = int(round(x / ds)), int(round(y / ds))
        h, w = page.shape[:2]
        if lx % edge or ly % edge or size % edge or lx < 0 or ly < 0 or lx + size > w or ly + size > h:
            return None
        across = -(-w // edge)
        fh, tables = self._tiff.filehandle, page.jpegtables
        streams = []
        for ty in range(ly // edge, (ly + size) // edge):
            for tx in range(lx // edge, (lx + size) // edge):
                index = ty * across + tx
                if not page.databytecounts[index]:
                    return None
                fh.seek(page.dataoffsets[index])
                data = fh.read(page.databytecounts[index])
                streams.append(data[:2] + tables[2:-2] + data[2:] if tables else data)
        return streams

    def read_level(self, level: int) -> np.ndarray:
        """Read a whole (low-resolution) level as RGB uint8."""
        w, h = self.info.level_dimensions[level]
        return self.read_region(0, 0, level, w, h)

    def close(self) -> None:
        if self._osr is not None:
            self._osr.close()
        if self._tiff is not None:
            self._tiff.close()

    def __enter__(self) -> SlideReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def open_slide(
    path: str | os.PathLike[str], mpp_override: float | None = None, decoder: Decoder = "auto"
) -> SlideReader:
    """Open a slide with the best backend for it.

    Args:
        path: The slide file.
        mpp_override: Microns per pixel to use when the file records none (or records a wrong value).
        decoder: ``auto`` decodes TIFF tiles directly when the file's levels are tiled TIFF pages and uses
            openslide otherwise; ``openslide`` or ``tifffile`` force one.

    Raises:
        SlideError: The file is missing, empty, truncated, corrupt or not a slide. The message names the file.

    Example:
        >>> with open_slide("data/slides/demo_01.svs") as slide:  # doctest: +SKIP
        ...     tile = slide.read_region(0, 0, level=0, width=512, height=512)
    """
    return SlideReader(path, mpp_override=mpp_override, decoder=decoder)


def _check_file(path: str) -> None:
    p = Path(path)
    if not p.is_file():
        raise SlideError(f"{path}: no such slide file. Check the path, or re-run `histofactory slides list`.")
    if p.stat().st_size == 0:
        raise SlideError(f"{path}: the file is empty (0 bytes); the copy or upload probably failed. Copy it again.")


def _check_not_truncated(path: str, pages: list) -> None:
    """A copy cut short points past the end of the file; say so instead of failing tile by tile later."""
    size = os.path.getsize(path)
    for page in pages:  # vectorised: a 100k-px level has ~150k tiles, and every worker opens the slide
        offsets, counts = np.asarray(page.dataoffsets, np.int64), np.asarray(page.databytecounts, np.int64)
        end = int((offsets + counts)[counts > 0].max(initial=0))
        if end > size:
            raise SlideError(
                f"{path}: the file is truncated (its tiles need {end} bytes, the file has {size}). The copy or "
                "upload was cut short; copy the slide again."
            )


def _float(value: str | None) -> float | None:
    try:
        return float(value) if value not in (None, "") else None
    except ValueError:
        return None


def _tiff_mpp(tif) -> float | None:
    """Microns per pixel from the first page's resolution tags (cm or inch units), if any."""
    page = tif.pages[0]
    tags = page.tags
    if "XResolution" not in tags or "ResolutionUnit" not in tags:
        return None
    num, den = tags["XResolution"].value
    unit = int(tags["ResolutionUnit"].value)
    if not num or unit not in (2, 3):
        return None
    per_micron = (num / den) / (1e4 if unit == 3 else 2.54e4)
    return 1.0 / per_micron if per_micron > 0 else None
