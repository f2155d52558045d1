"""Raster label masks: indexed (paletted) or 8-bit gray PNGs of class ids, read strictly and written atomically.

Pathologists deliver a raster mask as an indexed PNG with a palette, an 8-bit gray PNG of class ids, or (when the
class map's colours are given) an RGB picture painted in the class colours. All become a ``uint8 [H, W]`` array of
class ids; every problem raises :class:`~ops.labelling.class_maps.AnnotationError` naming the file and the fix.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from ops.labelling.class_maps import IGNORE_INDEX, AnnotationError, ClassMap, read_annotation_bytes


def load_png_mask(
    path: str | os.PathLike[str],
    expected_shape: tuple[int, int],
    n_classes: int,
    *,
    class_names: Sequence[str] | None = None,
    colours: Sequence[tuple[int, int, int]] | None = None,
    ignore_index: int = IGNORE_INDEX,
) -> np.ndarray:
    """Read a class-id mask from an indexed (paletted) or 8-bit grayscale PNG.

    Args:
        path: The PNG.
        expected_shape: ``(H, W)`` of the image it annotates.
        n_classes: Valid ids are ``0..n_classes-1`` (plus ``ignore_index``).
        class_names: Used in error messages only.
        colours: If given, RGB/RGBA masks are accepted and mapped by exact colour to class ids.
        ignore_index: Id allowed in addition to the classes (unannotated pixels).

    Returns:
        ``uint8 [H, W]`` class ids.

    Raises:
        AnnotationError: Missing/empty/unreadable file, unsupported mode, wrong size, unknown class ids or colours.
    """
    path = Path(path)
    raw = read_annotation_bytes(path, "a PNG mask")
    try:
        with Image.open(path) as im:
            im.load()
            mode, size = im.mode, im.size
            arr = np.asarray(im)
    except (UnidentifiedImageError, OSError, SyntaxError) as exc:
        raise AnnotationError(
            f"{path}: not a readable PNG ({len(raw)} bytes; {exc}). Fix: export the mask as an indexed or 8-bit "
            f"grayscale PNG"
        ) from None
    h, w = expected_shape
    if (size[1], size[0]) != (h, w):
        raise AnnotationError(
            f"{path}: mask is {size[1]}x{size[0]} (HxW), expected {h}x{w} like its image. Fix: export the mask at "
            f"the image's full resolution (downsample 1), without cropping"
        )
    known = list(class_names) if class_names is not None else [str(i) for i in range(n_classes)]
    if mode in ("P", "L"):
        mask = arr.astype(np.uint8, copy=False)
    elif mode in ("RGB", "RGBA") and colours is not None:
        mask = _rgb_to_ids(path, arr[..., :3], colours, known)
    else:
        accepted = "P (indexed) or L (8-bit gray)" + (", RGB/RGBA with class colours" if colours is not None else "")
        raise AnnotationError(
            f"{path}: PNG mode {mode!r} is not a class-id mask; expected {accepted}. Fix: save the mask as an "
            f"indexed PNG whose pixel values are class ids 0..{n_classes - 1}"
        )
    counts = np.bincount(mask.ravel(), minlength=256)
    bad = [int(v) for v in np.flatnonzero(counts) if v >= n_classes and v != ignore_index]
    if bad:
        raise AnnotationError(
            f"{path}: class ids {bad} not in the class map (valid ids 0..{n_classes - 1}: {known}"
            f"; {ignore_index} = unannotated). Fix: relabel those pixels or use the class map that defines them"
        )
    return np.ascontiguousarray(mask)


def _rgb_to_ids(
    path: Path, rgb: np.ndarray, colours: Sequence[tuple[int, int, int]], known: Sequence[str]
) -> np.ndarray:
    """Map exact RGB colours to class ids, vectorised via packed 24-bit keys."""
    table = np.asarray(colours, np.int64)
    keys = (table[:, 0] << 16) | (table[:, 1] << 8) | table[:, 2]
    packed = (rgb[..., 0].astype(np.int64) << 16) | (rgb[..., 1].astype(np.int64) << 8) | rgb[..., 2]
    order = np.argsort(keys)
    pos = np.clip(np.searchsorted(keys[order], packed), 0, len(keys) - 1)
    ids = order[pos]
    unknown = keys[ids] != packed
    if unknown.any():
        found = np.unique(packed[unknown])[:5]
        as_rgb = [((int(v) >> 16) & 255, (int(v) >> 8) & 255, int(v) & 255) for v in found]
        raise AnnotationError(
            f"{path}: {int(unknown.sum())} pixels have colours outside the class map, e.g. {as_rgb}; known colours: "
            f"{dict(zip(known, map(tuple, colours), strict=False))}. Fix: disable anti-aliasing when exporting"
        )
    return ids.astype(np.uint8)


def save_png_mask(path: str | os.PathLike[str], mask: np.ndarray, class_map: ClassMap) -> Path:
    """Write ``mask`` as an indexed PNG carrying the class map's palette (temp file, then rename)."""
    if mask.ndim != 2:
        raise AnnotationError(f"{path}: mask must be 2-D [H, W], received shape {mask.shape}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    im = Image.fromarray(np.asarray(mask, np.uint8), mode="P")
    im.putpalette(class_map.palette())
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        im.save(tmp, format="PNG")
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path
