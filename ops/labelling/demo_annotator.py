"""DEMO STAND-IN for an expert annotator: rule-based labels for IHC tissue. Not a pathologist, not ground truth.

The demo pipeline needs annotated generated images without a pathologist. This module draws labels with stain
separation (``skimage.color.rgb2hed``), thresholds and morphology, and writes them in the formats an expert would
deliver (indexed PNG, QuPath GeoJSON), so the import path is exercised exactly as in production.

Why these classes: labels that follow a pixel's colour are learned to ~99% by an MLP on RGB alone, which says
nothing about whether generator features carry spatial context. Here pairs of classes share colours and differ only
in context:

    0 background         bright glass/lumen with little stain, as regions (opened, small specks dropped)
    1 nucleus interior   hematoxylin-dominant nuclei, pixels > ``nucleus_border_um`` from the nuclear edge
    2 nucleus border     the band of width ``nucleus_border_um`` inside the nuclear edge  (same colour as 1)
    3 dab-positive region  DAB-stained epithelium as a smoothed, closed region (membranes and the cytoplasm
                         between them), not DAB pixels
    4 stroma             remaining tissue with few nuclei within ``neighbourhood_um``
    5 cellular stroma    remaining tissue whose neighbourhood is rich in nuclei       (same colour as 4)

Nuclei take precedence over the DAB region, which takes precedence over background and stroma.
Sizes are in micrometres and converted with the image's ``mpp``; the reference image
(``skimage.data.immunohistochemistry()``) is taken as 0.5 µm/px, the value the demo slides use.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy import ndimage
from skimage import color, filters

from ops.labelling.class_maps import CLASS_MAPS, ClassMap
from ops.labelling.geojson import mask_to_geojson, save_geojson
from ops.labelling.png_masks import save_png_mask

DEMO_CLASS_MAP: ClassMap = CLASS_MAPS["demo"]
BACKGROUND, NUCLEUS_INTERIOR, NUCLEUS_BORDER, DAB_REGION, STROMA, CELLULAR_STROMA = range(6)


@dataclass(frozen=True)
class DemoAnnotatorConfig:
    """Rules of the stand-in annotator. Lengths in µm, stain thresholds in rgb2hed optical-density units.

    Attributes:
        mpp: Microns per pixel of the image being labelled (a 64-px crop downsampled 4x from 0.5 µm/px: 2.0).
        nucleus_border_um: Width of the nucleus-border band inside the nuclear edge (1.5 µm = 3 px at 0.5).
        neighbourhood_um: Side of the square window in which nuclear density is measured (12.5 µm = 25 px).
        cellular_density: Share of nucleus pixels in that window above which tissue is "cellular stroma".
        nucleus_h_min: Minimum hematoxylin-minus-DAB signal of a nucleus pixel.
        nucleus_contrast: Minimum excess of that signal over its local (``local_bg_um``) mean.
        local_bg_um: Gaussian sigma of the local background subtracted before the nucleus threshold.
        nucleus_min_area_um2: Nuclei smaller than this are dropped as noise.
        dab_threshold: DAB level (after ``dab_smooth_um`` smoothing) above which tissue is the DAB region.
        dab_smooth_um: Gaussian sigma turning membrane stain into a region.
        background_gray: Smoothed gray level (0-255) above which a pixel may be background.
        background_h_max: Smoothed hematoxylin below which a pixel may be background.
        region_min_area_um2: Background/DAB regions (and holes in DAB regions) smaller than this are removed.
    """

    mpp: float = 0.5
    nucleus_border_um: float = 1.5
    neighbourhood_um: float = 12.5
    cellular_density: float = 0.2
    nucleus_h_min: float = 0.008
    nucleus_contrast: float = 0.006
    local_bg_um: float = 5.0
    nucleus_min_area_um2: float = 4.0
    dab_threshold: float = 0.045
    dab_smooth_um: float = 2.0
    background_gray: float = 226.0
    background_h_max: float = 0.011
    region_min_area_um2: float = 75.0

    def __post_init__(self) -> None:
        if self.mpp <= 0:
            raise ValueError(f"mpp must be > 0 µm/px, received {self.mpp}")
        if not 0 < self.cellular_density < 1:
            raise ValueError(f"cellular_density must be in (0, 1), received {self.cellular_density}")

    def px(self, um: float, minimum: float = 1.0) -> float:
        """A length in µm as pixels of this image (at least ``minimum``)."""
        return max(um / self.mpp, minimum)

    def px2(self, um2: float) -> int:
        """An area in µm² as a pixel count."""
        return max(int(round(um2 / self.mpp**2)), 1)


def _disk(radius: float) -> np.ndarray:
    r = max(int(round(radius)), 1)
    yy, xx = np.mgrid[-r : r + 1, -r : r + 1]
    return yy**2 + xx**2 <= r * r


def _drop_small(mask: np.ndarray, min_pixels: int) -> np.ndarray:
    """Remove connected components smaller than ``min_pixels`` (vectorised via label + bincount)."""
    labels, n = ndimage.label(mask)
    if n == 0:
        return mask
    sizes = np.bincount(labels.ravel())
    keep = sizes >= min_pixels
    keep[0] = False
    return keep[labels]


def nucleus_mask(image: np.ndarray, config: DemoAnnotatorConfig | None = None) -> np.ndarray:
    """Boolean nuclei: hematoxylin-dominant pixels brighter than their surroundings, cleaned and hole-filled."""
    config = config or DemoAnnotatorConfig()
    hed = color.rgb2hed(image)
    signal = filters.gaussian(hed[..., 0], 1.0) - 0.35 * filters.gaussian(hed[..., 2], 1.0)  # H minus DAB bleed
    contrast = signal - filters.gaussian(signal, config.px(config.local_bg_um))
    nuclei = (contrast > config.nucleus_contrast) & (signal > config.nucleus_h_min)
    nuclei = ndimage.binary_opening(nuclei, _disk(1))
    nuclei = _drop_small(nuclei, config.px2(config.nucleus_min_area_um2))
    return ndimage.binary_fill_holes(nuclei)


def demo_annotate(image: np.ndarray, config: DemoAnnotatorConfig | None = None) -> np.ndarray:
    """Label an RGB IHC image with the demo classes (see module docstring). DEMO STAND-IN, not expert truth.

    Args:
        image: ``uint8 [H, W, 3]`` RGB, any size from 64 px up.
        config: Rules; set ``config.mpp`` to the image's resolution.

    Returns:
        ``uint8 [H, W]`` class ids of ``DEMO_CLASS_MAP``.

    Example:
        >>> from skimage import data
        >>> demo_annotate(data.immunohistochemistry()).shape
        (512, 512)
    """
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError(f"expected uint8 RGB [H, W, 3], received {image.dtype} {image.shape}")
    config = config or DemoAnnotatorConfig()
    hed = color.rgb2hed(image)
    nuclei = nucleus_mask(image, config)
    # Distance to the nuclear edge; padding with False makes nuclei cut by the image border get a border there too.
    inside = ndimage.distance_transform_edt(np.pad(nuclei, 1))[1:-1, 1:-1]
    band = config.px(config.nucleus_border_um)

    gray = filters.gaussian(image.mean(axis=2), config.px(1.5), preserve_range=True)
    hema = filters.gaussian(hed[..., 0], config.px(1.5))
    background = (gray > config.background_gray) & (hema < config.background_h_max)
    background = ndimage.binary_opening(background, _disk(config.px(1.5)))
    background = _drop_small(background, config.px2(config.region_min_area_um2))

    dab = filters.gaussian(hed[..., 2], config.px(config.dab_smooth_um)) > config.dab_threshold
    dab = ndimage.binary_closing(dab, _disk(config.px(1.5)), border_value=1)
    dab = _drop_small(dab, config.px2(config.region_min_area_um2))
    dab = ~_drop_small(~dab, config.px2(config.region_min_area_um2))  # fill small holes

    window = int(round(config.px(config.neighbourhood_um, minimum=3)))
    density = ndimage.uniform_filter(nuclei.astype(np.float32), size=window, mode="reflect")

    labels = np.where(density > config.cellular_density, CELLULAR_STROMA, STROMA).astype(np.uint8)
    labels[dab] = DAB_REGION
    labels[background] = BACKGROUND
    labels[nuclei & (inside <= band)] = NUCLEUS_BORDER
    labels[nuclei & (inside > band)] = NUCLEUS_INTERIOR
    return labels


def demo_labels(images: np.ndarray) -> np.ndarray:
    """The stand-in's labels of a batch (uint8 ``[N, H, W, 3]`` -> ``[N, H, W]``): the demo's labeller of any image,
    which is what makes a synthetic pair's label fidelity measurable there."""
    return np.stack([demo_annotate(image) for image in images])


def class_shares(labels: np.ndarray, n_classes: int = DEMO_CLASS_MAP.n_classes) -> np.ndarray:
    """Pixel share of each class, float64 [n_classes]."""
    return np.bincount(labels.ravel(), minlength=n_classes)[:n_classes] / labels.size


def write_demo_annotation(
    image: np.ndarray,
    out_dir: str | os.PathLike[str],
    stem: str,
    formats: tuple[str, ...] = ("png", "geojson"),
    config: DemoAnnotatorConfig | None = None,
) -> dict[str, Path]:
    """Annotate ``image`` and write the mask as an expert would deliver it.

    Args:
        image: ``uint8 [H, W, 3]``.
        out_dir: Folder for the files.
        stem: File stem = the image id (``<stem>.png`` / ``<stem>.geojson``), which the importer matches on.
        formats: Any of ``"png"`` (indexed, with palette) and ``"geojson"`` (QuPath FeatureCollection; background
            is not exported, as QuPath users leave it unannotated).
        config: Annotator rules.

    Returns:
        Format -> written path.
    """
    unknown = set(formats) - {"png", "geojson"}
    if unknown:
        raise ValueError(f"unknown formats {sorted(unknown)}; expected 'png' and/or 'geojson'")
    labels = demo_annotate(image, config)
    out_dir = Path(out_dir)
    written: dict[str, Path] = {}
    if "png" in formats:
        written["png"] = save_png_mask(out_dir / f"{stem}.png", labels, DEMO_CLASS_MAP)
    if "geojson" in formats:
        doc = mask_to_geojson(labels, DEMO_CLASS_MAP, skip_classes=(BACKGROUND,))
        written["geojson"] = save_geojson(out_dir / f"{stem}.geojson", doc)
    return written
