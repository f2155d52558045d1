"""Tissue detection on a low-resolution image of the slide.

Follows what CLAM and slideflow do (HSV saturation, median blur, Otsu with a floor, morphological closing, small
objects and holes removed): glass is bright and grey, stained tissue is saturated. The mask is computed at a
downsample of ~32, so a 100k x 100k slide costs a ~3k x 3k image, and full-resolution tiles that are clearly glass are
never decoded. The Otsu threshold is floored so an all-glass slide (where Otsu would split sensor noise) finds no
tissue instead of noise.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage
from skimage import filters, morphology

from ops.slides.reader import SlideReader


@dataclass(frozen=True)
class TissueMaskParams:
    """How tissue is told from glass on the low-resolution image.

    Attributes:
        mask_downsample: Downsample (vs level 0) of the image the mask is computed on; 32-64 as in CLAM/slideflow.
        saturation_threshold: Fixed HSV-saturation threshold in [0, 1]; ``None`` uses Otsu, floored at
            ``min_saturation``.
        min_saturation: Lowest threshold Otsu may pick (glass noise sits below ~0.03; CLAM's sthresh 8/255).
        max_saturation: Highest threshold Otsu may pick: on strongly stained tissue Otsu splits dark from pale
            tissue instead of tissue from glass; the per-tile whitespace check removes what this lets through.
        median_size: Median-filter edge in mask pixels (removes JPEG speckle and dust).
        close_radius: Radius in mask pixels of the morphological closing that joins nearby tissue fragments.
        min_tissue_area_um2: Tissue pieces smaller than this (square microns) are dropped; smaller holes filled.
    """

    mask_downsample: float = 32.0
    saturation_threshold: float | None = None
    min_saturation: float = 0.05
    max_saturation: float = 0.07
    median_size: int = 7
    close_radius: int = 2
    min_tissue_area_um2: float = 20_000.0


def saturation(rgb: np.ndarray) -> np.ndarray:
    """HSV saturation of an RGB uint8 image as float32 in [0, 1], computed without a full HSV conversion."""
    assert rgb.ndim == 3 and rgb.shape[-1] >= 3, f"expected [H, W, 3] RGB, received {rgb.shape}"
    hi, lo = channel_max_min(rgb)
    hi = hi.astype(np.float32)
    return np.divide(hi - lo, hi, out=np.zeros_like(hi), where=hi > 0)


def channel_max_min(rgb: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-pixel max and min over R, G, B (elementwise; ``ndarray.max(axis=-1)`` is ~10x slower on [H, W, 3])."""
    r, g, b = rgb[..., 0], rgb[..., 1], rgb[..., 2]
    return np.maximum(np.maximum(r, g), b), np.minimum(np.minimum(r, g), b)


def tissue_mask(rgb: np.ndarray, mask_mpp: float | None, params: TissueMaskParams) -> tuple[np.ndarray, float]:
    """Boolean tissue mask of a low-resolution RGB image.

    Args:
        rgb: ``[H, W, 3]`` uint8 low-resolution image of the slide.
        mask_mpp: Microns per pixel of ``rgb`` (converts the minimum area); ``None`` treats the area as 0.
        params: Thresholds and morphology.

    Returns:
        (mask, threshold): the mask ``[H, W]`` and the saturation threshold used.
    """
    # Saturation in steps of 1/255 (uint8): the median filter and Otsu then touch a quarter of the float32 bytes, so
    # the mask of a 65k-px-wide slide (a 2k x 1.5k image) costs ~10 MB instead of ~70 and memory stays flat.
    hi, lo = channel_max_min(rgb)
    sat = ((hi - lo).astype(np.uint16) * 255 // np.maximum(hi, 1)).astype(np.uint8)
    sat = ndimage.median_filter(sat, size=params.median_size)
    if params.saturation_threshold is not None:
        threshold = float(params.saturation_threshold)
    else:
        otsu = filters.threshold_otsu(sat) / 255 if np.ptp(sat) > 0 else 1.0
        threshold = float(np.clip(otsu, params.min_saturation, params.max_saturation))
    mask = sat > threshold * 255
    if params.close_radius > 0:
        mask = ndimage.binary_closing(mask, structure=morphology.disk(params.close_radius), border_value=0)
    min_px = int(params.min_tissue_area_um2 / mask_mpp**2) if mask_mpp else 0
    if min_px > 1:
        mask = morphology.remove_small_objects(mask, max_size=min_px)
        mask = morphology.remove_small_holes(mask, max_size=min_px)
    return mask, threshold


def read_lowres(reader: SlideReader, target_downsample: float) -> tuple[np.ndarray, float]:
    """Read the slide at roughly ``target_downsample`` without ever holding level 0 in memory.

    Uses the pyramid level nearest below the target. A slide without a suitable level (single-level TIFF) is read
    in horizontal strips and block-averaged, so memory stays bounded by one strip.

    Returns:
        (rgb, downsample): the image and its actual downsample vs level 0.
    """
    downsamples = reader.info.level_downsamples
    usable = [i for i, d in enumerate(downsamples) if d <= target_downsample * 1.5]
    level = max(usable, key=lambda i: downsamples[i]) if usable else 0
    ds = downsamples[level]
    factor = max(int(round(target_downsample / ds)), 1)
    if factor == 1:
        return reader.read_level(level), ds
    w, h = reader.info.level_dimensions[level]
    out_h, out_w = h // factor, w // factor
    out = np.empty((out_h, out_w, 3), np.uint8)
    # Rows per read: a multiple of the factor, about 2 MB of pixels whatever the slide's width, so memory stays flat
    # in slide size (a 2048-row strip averaged in float64 cost +140 MB on a 65k-wide slide).
    strip = max(1, (2 << 20) // max(out_w * factor * 3 * factor, 1)) * factor
    area = factor * factor
    for y in range(0, out_h * factor, strip):
        rows = min(strip, out_h * factor - y)
        block = reader.read_region(0, int(y * ds), level, out_w * factor, rows)
        sums = block.reshape(rows // factor, factor, out_w, factor, 3).sum(axis=(1, 3), dtype=np.uint32)
        out[y // factor : (y + rows) // factor] = ((sums + area // 2) // area).astype(np.uint8)
    return out, ds * factor
