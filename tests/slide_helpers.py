"""Helpers for tests that damage slides on purpose."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import tifffile


def corrupt_tile(path: Path, tile_index: int) -> None:
    """Destroy the JPEG data of one level-0 TIFF tile in place (its SOI marker and header)."""
    with tifffile.TiffFile(path) as tif:
        page = tif.pages[0]
        offset, count = page.dataoffsets[tile_index], page.databytecounts[tile_index]
    with open(path, "r+b") as f:
        f.seek(offset)
        f.write(np.zeros(min(count, 600), np.uint8).tobytes())


def corrupt_level(path: Path, page_index: int) -> None:
    """Destroy the JPEG data of every tile of one TIFF page (a pyramid level) in place."""
    with tifffile.TiffFile(path) as tif:
        page = tif.pages[page_index]
        spans = [(o, min(c, 600)) for o, c in zip(page.dataoffsets, page.databytecounts, strict=True) if c]
    with open(path, "r+b") as f:
        for offset, count in spans:
            f.seek(offset)
            f.write(np.zeros(count, np.uint8).tobytes())


def zero_level_size(path: Path, page_index: int) -> None:
    """Set one page's ImageWidth and ImageLength tags to 0 in place (a slide whose level is 0 x 0 pixels)."""
    with tifffile.TiffFile(path) as tif:
        tags = tif.pages[page_index].tags
        spans = [(tags[name].valueoffset, tags[name].dtype) for name in ("ImageWidth", "ImageLength")]
        byteorder = tif.byteorder
    with open(path, "r+b") as f:
        for offset, dtype in spans:
            f.seek(offset)
            f.write(np.zeros(1, np.dtype(f"{byteorder}u{4 if dtype == 4 else 2}")).tobytes())


def broken_slides(good: Path, out: Path) -> dict[str, tuple[Path, str]]:
    """One file per class of broken slide, each with the words its refusal must contain.

    ``good`` is a small pyramidal demo slide (3 levels); every fixture is derived from it or written from scratch in
    ``out``, in well under a second each.
    """
    from skimage import data

    from ops.slides.demo_slides import DemoSlideSpec, write_demo_slide

    out.mkdir(parents=True, exist_ok=True)
    made: dict[str, tuple[Path, str]] = {}

    def copy(name: str) -> Path:
        path = out / name
        shutil.copy(good, path)
        return path

    path = copy("corrupt_tiles.svs")  # a valid SVS whose tile data is garbage at every level
    for page in range(3):
        corrupt_level(path, page)
    made["corrupt_tiles"] = (path, r"lowest-resolution level .*cannot be decoded")

    path = copy("level0_unreadable.svs")  # the thumbnail reads, full resolution does not
    corrupt_level(path, 0)
    made["level0_unreadable"] = (path, r"tile data at level 0 cannot be decoded")

    path = out / "icon.tiff"  # a TIFF that is no slide: one 8 x 8 page
    tifffile.imwrite(path, np.full((8, 8, 3), 200, np.uint8), photometric="rgb")
    made["tiny_tiff"] = (path, r"not a slide: the largest image is 8x8 pixels.*TIFF with 1 page: 8x8 px")

    path = out / "mask_only.tif"  # no RGB level at all: a float mask saved as TIFF
    tifffile.imwrite(path, np.zeros((1024, 1024), np.float32))
    made["no_usable_level"] = (
        path,
        r"no image pyramid and no readable level.*TIFF with 1 page: 1024x1024 px, 1 channel",
    )

    path = out / "photo.svs"  # the extension lies: a PNG renamed .svs
    from PIL import Image

    Image.fromarray(data.immunohistochemistry()).save(path, format="PNG")
    made["extension_lies"] = (path, r"extension says \.svs .*but the file is a PNG image")

    path = copy("zero_levels.svs")  # a pyramid level of 0 x 0 pixels
    zero_level_size(path, 0)
    made["zero_levels"] = (path, r"level 0 of the image pyramid .* is 0x0 pixels \(empty\)")

    for name, value in (("mpp_zero", "0"), ("mpp_nan", "nan")):
        spec = DemoSlideSpec(name, 1024, 1024, seed=5, mpp=None, levels=2, properties={"MPP": value})
        made[name] = (
            write_demo_slide(spec, out),
            rf"resolution of {value}(\.0)? microns per pixel, which is impossible",
        )
    return made
