"""Validation at the door: open a new slide fully enough to know it can be tiled, or refuse it in plain words.

Real-world broken files are more varied than zero-byte or truncated copies: an SVS whose tile data no decoder
accepts, a TIFF that is a thumbnail rather than a slide, a PNG renamed ``.svs``, levels of 0 x 0 pixels, an mpp of 0.
Opening the header succeeds for most of them, and the failure surfaced only deep inside tiling as a bare numpy error.
``validate_slide`` runs the checks a tiler depends on, in the order a pathologist's engineer would debug them:

1. the file's first bytes match its extension (a renamed PNG/JPEG/ZIP/PDF is named as such);
2. a reader (openslide, else tifffile) opens it;
3. a pyramid (or a single level) of plausible size exists: every level has pixels, level 0 is at least
   ``MIN_SIDE`` on each side, and levels shrink monotonically;
4. the recorded microns-per-pixel, when present, is a positive finite number;
5. the lowest-resolution level (the thumbnail) decodes;
6. a grid of tiles across level 0 decodes (most of them must: one corrupt tile mid-slide is the tiler's business,
   it records it and moves on).

Every failure raises ``SlideError`` with one message: the file, what is wrong, what to do.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ops.slides.reader import TIFF_SUFFIXES, SlideError, SlideInfo, SlideReader, open_slide

MIN_SIDE = 256  # level-0 pixels; smaller images are thumbnails or icons, never scans
SAMPLE_GRID = 4  # level-0 tiles sampled per axis (16 tiles across the slide)
SAMPLE_SIZE = 256  # edge of a sampled tile, level-0 pixels
MAX_BAD_SAMPLES = 0.5  # share of sampled tiles allowed to fail before the slide is refused
THUMB_MAX_SIDE = 4096  # a lowest level larger than this is checked on a centred window, not decoded whole

_REEXPORT = "Re-export the slide from the scanner software (or copy it again from the archive) and add it again."

# First bytes of formats people mistake for slides, for the "extension lies" message.
_MAGIC = (
    (b"\x89PNG\r\n\x1a\n", "a PNG image"),
    (b"\xff\xd8\xff", "a JPEG image"),
    (b"PK\x03\x04", "a ZIP archive"),
    (b"%PDF", "a PDF document"),
    (b"\x1f\x8b", "a gzip archive"),
    (b"GIF8", "a GIF image"),
    (b"BM", "a BMP image"),
)
_TIFF_MAGIC = (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")


@dataclass(frozen=True)
class SlideCheck:
    """What validation saw on a slide that passed."""

    info: SlideInfo
    decoder: str
    sampled_tiles: int
    bad_tiles: int  # sampled level-0 tiles that failed to decode (fewer than MAX_BAD_SAMPLES of them)


def validate_slide(path: str | os.PathLike[str], mpp_override: float | None = None) -> SlideCheck:
    """Refuse a file that cannot be tiled, with a message naming the file, the problem and the fix.

    Args:
        path: The slide file.
        mpp_override: Microns per level-0 pixel the tiler will use instead of the recorded one; when given, a
            missing or impossible recorded mpp is not an error.

    Returns:
        What was checked (levels, decoder, sampled tiles).

    Raises:
        SlideError: The file fails one of the checks in the module docstring.
    """
    path = str(path)
    _check_extension(path)
    try:
        reader = open_slide(path, mpp_override=mpp_override)
    except SlideError as exc:
        raise SlideError(_with_tiff_description(path, str(exc))) from exc
    except Exception as exc:  # a reader failing on a malformed header must still name the file
        raise SlideError(
            _with_tiff_description(path, f"{path}: cannot be opened as a slide ({_short(exc)}). {_REEXPORT}")
        ) from exc
    with reader:
        _check_levels(path, reader.info)
        if mpp_override is None:
            _check_mpp(path, reader.info.mpp)
        _check_lowest_level(path, reader)
        sampled, bad = _check_level0_samples(path, reader)
        return SlideCheck(reader.info, reader.decoder, sampled, bad)


def _check_extension(path: str) -> None:
    """A TIFF-family extension on a file that is not a TIFF (a renamed PNG, a zipped slide)."""
    if not path.lower().endswith(TIFF_SUFFIXES):
        return
    with open(path, "rb") as f:
        head = f.read(8)
    if not head:
        return  # an empty file: the reader's own message says so
    if head.startswith(_TIFF_MAGIC):
        return
    what = next((name for magic, name in _MAGIC if head.startswith(magic)), "not a TIFF (unknown content)")
    raise SlideError(
        f"{path}: the extension says {Path(path).suffix} (a TIFF-based slide) but the file is {what}. The file was "
        "renamed or converted by mistake: add the original slide file, or give this file its real extension."
    )


def _check_levels(path: str, info: SlideInfo) -> None:
    dims = info.level_dimensions
    if not dims:
        raise SlideError(f"{path}: no image pyramid and no readable level. {_REEXPORT}")
    empty = [i for i, (w, h) in enumerate(dims) if w <= 0 or h <= 0]
    if empty:
        w, h = dims[empty[0]]
        raise SlideError(
            f"{path}: level {empty[0]} of the image pyramid is {w}x{h} pixels (empty); the file's structure is "
            f"damaged. {_REEXPORT}"
        )
    w0, h0 = dims[0]
    if min(w0, h0) < MIN_SIDE:
        raise SlideError(
            _with_tiff_description(
                path,
                f"{path}: not a slide: the largest image is {w0}x{h0} pixels (a slide scan is at least "
                f"{MIN_SIDE} pixels on each side, usually 50,000+). This looks like a thumbnail, label or icon; add "
                "the full-resolution slide file instead.",
            )
        )
    for i in range(1, len(dims)):
        if dims[i][0] > dims[i - 1][0] or dims[i][1] > dims[i - 1][1]:
            raise SlideError(
                f"{path}: the image pyramid is inconsistent (level {i} is {dims[i][0]}x{dims[i][1]} pixels, larger "
                f"than level {i - 1} at {dims[i - 1][0]}x{dims[i - 1][1]}). {_REEXPORT}"
            )


def _check_mpp(path: str, mpp: float | None) -> None:
    if mpp is not None and (not math.isfinite(mpp) or mpp <= 0):
        raise SlideError(
            f"{path}: the file records a resolution of {mpp} microns per pixel, which is impossible (expected a "
            "positive number, e.g. 0.25 at 40x or 0.5 at 20x). Re-export the slide with its scan resolution, or tile "
            "it with mpp_override set in the tile_grid config."
        )


def _check_lowest_level(path: str, reader: SlideReader) -> None:
    """The thumbnail (lowest level) must decode; a huge single level is checked on a centred window."""
    level = len(reader.info.level_dimensions) - 1
    w, h = reader.info.level_dimensions[level]
    ww, hh = min(w, THUMB_MAX_SIDE), min(h, THUMB_MAX_SIDE)
    ds = reader.info.level_downsamples[level]
    x0, y0 = int((w - ww) // 2 * ds), int((h - hh) // 2 * ds)
    try:
        reader.read_region(x0, y0, level, ww, hh)
    except Exception as exc:
        raise SlideError(
            f"{path}: the lowest-resolution level (level {level}, {w}x{h} pixels) cannot be decoded ({_short(exc)}): "
            f"the image data is corrupt. {_REEXPORT}"
        ) from exc


def _check_level0_samples(path: str, reader: SlideReader) -> tuple[int, int]:
    """Decode a grid of level-0 tiles spread over the slide; refuse when most of them fail."""
    w0, h0 = reader.info.level_dimensions[0]
    size = min(SAMPLE_SIZE, w0, h0)
    xs = np.linspace(0, w0 - size, SAMPLE_GRID).astype(int)
    ys = np.linspace(0, h0 - size, SAMPLE_GRID).astype(int)
    failures: list[tuple[int, int, Exception]] = []
    for y in ys:
        for x in xs:
            try:
                reader.read_region(int(x), int(y), 0, size, size)
            except Exception as exc:  # decoder errors come in many types; they are reported, not swallowed
                failures.append((int(x), int(y), exc))
    total = len(xs) * len(ys)
    if len(failures) > MAX_BAD_SAMPLES * total:
        x, y, exc = failures[0]
        raise SlideError(
            f"{path}: tile data at level 0 cannot be decoded ({len(failures)} of {total} tiles sampled across the "
            f"slide failed; first at x={x}, y={y}: {_short(exc)}). The full-resolution image is corrupt even if a "
            f"thumbnail shows. {_REEXPORT}"
        )
    return total, len(failures)


def _short(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"[:160]


def _with_tiff_description(path: str, message: str) -> str:
    """Append what the TIFF actually holds (pages, sizes, channels), when it is a TIFF at all."""
    summary = describe_tiff(path)
    return f"{message} (The file is a TIFF with {summary}.)" if summary else message


def describe_tiff(path: str | os.PathLike[str]) -> str | None:
    """``"1 page of 8x8 px, 1 channel uint8"``-style summary of a TIFF's pages, or ``None`` if it is no TIFF."""
    import tifffile

    try:
        with tifffile.TiffFile(path) as tif:
            pages = list(tif.pages)
            parts = []
            for page in pages[:4]:
                channels = page.shape[-1] if page.ndim == 3 else 1
                kind = "tiled" if page.is_tiled else "stripped"
                w, h = page.tags.valueof(256, 1), page.tags.valueof(257, 1)  # as recorded (tifffile fixes 0s)
                parts.append(f"{w}x{h} px, {channels} channel {page.dtype} {kind}")
    except Exception:
        return None
    more = f" (+{len(pages) - 4} more)" if len(pages) > 4 else ""
    noun = "page" if len(pages) == 1 else "pages"
    return f"{len(pages)} {noun}: " + "; ".join(parts) + more
