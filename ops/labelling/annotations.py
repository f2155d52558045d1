"""Expert label masks: class maps, import (indexed PNG, QuPath GeoJSON), validation, versioning and splits.

Pathologists deliver masks in two shapes: a class-id raster (indexed PNG with a palette, or 8-bit gray) or
vector annotations exported from QuPath as GeoJSON. Both become the same thing here: a ``uint8 [H, W]`` array of
class ids, with ``IGNORE_INDEX`` (255) for pixels nobody labelled when requested. Every problem with a file raises
:class:`AnnotationError` naming the file, what was expected, what was found and how to fix it, because these files
come from people, and the fix is usually on their side (wrong export resolution, a typo in a class name).

Coordinates: QuPath GeoJSON uses pixel-edge coordinates (pixel ``(col, row)`` covers ``[col, col+1)``), so a pixel
belongs to a polygon when its centre ``(col + 0.5, row + 0.5)`` is inside it.
"""

from __future__ import annotations

import difflib
import hashlib
import json
import os
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, UnidentifiedImageError
from scipy import ndimage
from skimage import measure

IGNORE_INDEX = 255  # label value for unannotated pixels when ``fill=IGNORE_INDEX``
PAPER_SPLIT = (16, 4, 16)  # HDGAN: annotated generated images for train / validation / test


class AnnotationError(ValueError):
    """An annotation file (or set) cannot be used; the message names the file, the problem and the fix."""


# ----------------------------------------------------------------------------------------------------------------
# Class maps.


@dataclass(frozen=True)
class ClassMap:
    """Ordered class names (index = class id) with display colours (RGB, 0-255).

    Attributes:
        name: Preset name.
        classes: Class names; position is the class id written into masks.
        colours: One RGB triple per class (PNG palette, QuPath ``colorRGB``, overlays).
    """

    name: str
    classes: tuple[str, ...]
    colours: tuple[tuple[int, int, int], ...]

    def __post_init__(self) -> None:
        if len(self.classes) != len(self.colours):
            raise ValueError(f"class map {self.name!r}: {len(self.classes)} classes but {len(self.colours)} colours")
        if len(set(self.classes)) != len(self.classes):
            raise ValueError(f"class map {self.name!r}: duplicate class names {self.classes}")
        if not 1 <= len(self.classes) < IGNORE_INDEX:
            raise ValueError(f"class map {self.name!r}: expected 1..254 classes, received {len(self.classes)}")

    @property
    def n_classes(self) -> int:
        return len(self.classes)

    def palette(self) -> list[int]:
        """Flat 768-value PIL palette; unused entries black, ``IGNORE_INDEX`` grey."""
        pal = np.zeros((256, 3), np.uint8)
        pal[: self.n_classes] = self.colours
        pal[IGNORE_INDEX] = (128, 128, 128)
        return pal.ravel().tolist()

    def index(self, name: str) -> int:
        """Class id of ``name``; unknown names raise an error listing the known ones."""
        try:
            return self.classes.index(name)
        except ValueError:
            raise AnnotationError(_unknown_class_message(name, self.classes)) from None


# Demo classes: what the rule-based stand-in annotator (ops/labelling/demo_annotator.py) draws on IHC tissue.
# Classes 1/2 and 4/5 have the same colours in the image; only context (distance to a nuclear edge, nuclear density
# around) tells them apart, so a classifier must use generator features, not a pixel's RGB, to learn them.
CLASS_MAPS: dict[str, ClassMap] = {
    "demo": ClassMap(
        "demo",
        ("background", "nucleus interior", "nucleus border", "dab-positive region", "stroma", "cellular stroma"),
        ((245, 245, 245), (30, 30, 200), (110, 200, 255), (150, 75, 0), (255, 185, 200), (200, 0, 120)),
    ),
    "paper": ClassMap(  # HDGAN kidney classes
        "paper",
        ("whitespace", "cortical tubulointerstitium", "glomerulus", "arteriole", "artery"),
        ((255, 255, 255), (230, 160, 170), (60, 160, 60), (240, 200, 30), (200, 30, 30)),
    ),
}


def get_class_map(name: str) -> ClassMap:
    """Class map preset by name; an unknown name raises an error listing the presets."""
    if name not in CLASS_MAPS:
        raise AnnotationError(f"unknown class map {name!r}; known class maps: {sorted(CLASS_MAPS)}")
    return CLASS_MAPS[name]


def _unknown_class_message(name: str, known: Sequence[str], where: str = "") -> str:
    close = difflib.get_close_matches(name, known, n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    return (
        f"{where}unknown class {name!r}{hint}; known classes: {list(known)}. Fix: rename the class in the "
        f"annotation tool, or use the class map that lists it"
    )


# ----------------------------------------------------------------------------------------------------------------
# Raster masks (PNG).


def _read_bytes(path: Path, what: str) -> bytes:
    if not path.is_file():
        raise AnnotationError(f"{path}: {what} file not found")
    raw = path.read_bytes()
    if not raw.strip():
        raise AnnotationError(f"{path}: file is empty (0 bytes of content); expected {what}. Fix: re-export it")
    return raw


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
    raw = _read_bytes(path, "a PNG mask")
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


# ----------------------------------------------------------------------------------------------------------------
# Vector annotations (QuPath GeoJSON).


def qupath_color_rgb(rgb: Sequence[int]) -> int:
    """QuPath's packed ``colorRGB``: signed 32-bit ARGB with alpha 255 (red -> -65536)."""
    value = (255 << 24) | (int(rgb[0]) << 16) | (int(rgb[1]) << 8) | int(rgb[2])
    return value - (1 << 32)


def _features_of(doc: Any, path: Path) -> list[dict]:
    if isinstance(doc, list):
        return doc
    if isinstance(doc, dict) and doc.get("type") == "FeatureCollection":
        return list(doc.get("features") or [])
    if isinstance(doc, dict) and doc.get("type") == "Feature":
        return [doc]
    kind = doc.get("type") if isinstance(doc, dict) else type(doc).__name__
    raise AnnotationError(
        f"{path}: expected a GeoJSON FeatureCollection, a Feature or a list of Features, found {kind!r}. "
        f"Fix: export annotations from QuPath with 'Export objects as GeoJSON'"
    )


def _classification_name(feature: dict, path: Path, k: int) -> str:
    props = feature.get("properties") or {}
    cls = props.get("classification")
    name = cls.get("name") if isinstance(cls, dict) else None
    if not isinstance(name, str):
        raise AnnotationError(
            f"{path}: feature {k} has no properties.classification.name (unclassified annotation). "
            f"Fix: assign a class to every annotation in QuPath before exporting"
        )
    return name


def _polygons_of(geometry: Any, path: Path, k: int) -> list[list[np.ndarray]]:
    """Rings of each polygon of a Polygon/MultiPolygon geometry as float arrays [n, 2] of (x, y)."""
    kind = geometry.get("type") if isinstance(geometry, dict) else None
    try:
        if kind == "Polygon":
            polys = [geometry["coordinates"]]
        elif kind == "MultiPolygon":
            polys = geometry["coordinates"]
        else:
            raise AnnotationError(
                f"{path}: feature {k} has geometry {kind!r}; expected Polygon or MultiPolygon (areas). Fix: export "
                f"only area annotations (no points, lines or detections)"
            )
        return [[np.asarray(ring, np.float64).reshape(-1, 2) for ring in poly] for poly in polys]
    except (KeyError, TypeError, ValueError) as exc:
        if isinstance(exc, AnnotationError):
            raise
        raise AnnotationError(f"{path}: feature {k} has malformed coordinates ({exc})") from None


PolygonCheck = Callable[[int, str, np.ndarray], None]  # (feature position, class name, all ring points [n, 2])


def read_geojson_polygons(
    path: str | os.PathLike[str],
    class_names: Sequence[str],
    check: PolygonCheck | None = None,
) -> list[tuple[float, int, int, list[np.ndarray]]]:
    """Parse QuPath GeoJSON into area polygons, validating every feature; shared by image and slide imports.

    Why a callback: the caller knows the canvas (an image, a whole slide) and its error wording, while the
    parsing and the order in which problems are reported (file order) stay in one place.

    Args:
        path: GeoJSON file (FeatureCollection, Feature, or list of Features, as QuPath versions write).
        class_names: Class names; position = id. Matched against ``properties.classification.name``.
        check: Called per polygon (after its class is validated) with ``(feature position, class name, points)``;
            raises to reject it (coordinates beyond the canvas).

    Returns:
        ``(area of the exterior ring, feature position, class id, rings)`` per polygon in file order; rings are
        ``[n, 2]`` float64 (x, y) arrays, exterior first. Polygons with fewer than 3 vertices are dropped.

    Raises:
        AnnotationError: Missing, empty or non-JSON file; not GeoJSON; unclassified or unknown-class features;
            non-area geometry; malformed coordinates; whatever ``check`` raises.
    """
    path = Path(path)
    raw = _read_bytes(path, "a GeoJSON annotation")
    try:
        doc = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise AnnotationError(
            f"{path}: not valid JSON ({exc}); expected QuPath GeoJSON. Fix: re-export from QuPath, or check the "
            f"file was not truncated"
        ) from None
    items: list[tuple[float, int, int, list[np.ndarray]]] = []  # (area, file position, class id, rings)
    for k, feature in enumerate(_features_of(doc, path)):
        if not isinstance(feature, dict):
            raise AnnotationError(f"{path}: item {k} is {type(feature).__name__}, expected a GeoJSON Feature")
        name = _classification_name(feature, path, k)
        if name not in class_names:
            raise AnnotationError(_unknown_class_message(name, class_names, f"{path}: feature {k}: "))
        cls = list(class_names).index(name)
        for rings in _polygons_of(feature.get("geometry"), path, k):
            if not rings or len(rings[0]) < 3:
                continue
            if check is not None:
                check(k, name, np.concatenate(rings))
            x, y = rings[0][:, 0], rings[0][:, 1]
            area = 0.5 * abs(float(np.dot(x, np.roll(y, 1)) - np.dot(y, np.roll(x, 1))))
            items.append((area, k, cls, rings))
    return items


def load_geojson_mask(
    path: str | os.PathLike[str],
    shape: tuple[int, int],
    class_names: Sequence[str],
    *,
    fill: int = 0,
    order: str = "area",
    tolerance: float = 1.0,
) -> np.ndarray:
    """Rasterise QuPath GeoJSON annotations into a class-id mask.

    Args:
        path: GeoJSON file (FeatureCollection, Feature, or list of Features, as QuPath versions write).
        shape: ``(H, W)`` of the annotated image.
        class_names: Class names; position = id. Matched against ``properties.classification.name``.
        fill: Id for pixels no annotation covers: 0 (background class) or ``IGNORE_INDEX``.
        order: ``"area"`` paints larger polygons first, so an annotation drawn inside another one (a glomerulus
            in cortex) wins; ``"file"`` paints in file order (later wins).
        tolerance: Pixels by which coordinates may exceed the image before it counts as the wrong image/size.

    Returns:
        ``uint8 [H, W]``.

    Raises:
        AnnotationError: Missing, empty or non-JSON file; not GeoJSON; unclassified or unknown-class features;
            non-area geometry; coordinates beyond the image (drawn on another image or resolution).
    """
    path = Path(path)
    if order not in ("area", "file"):
        raise AnnotationError(f"order must be 'area' or 'file', received {order!r}")
    h, w = shape

    def inside_image(k: int, name: str, pts: np.ndarray) -> None:
        if (pts.min(0) < -tolerance).any() or pts[:, 0].max() > w + tolerance or pts[:, 1].max() > h + tolerance:
            raise AnnotationError(
                f"{path}: feature {k} ({name!r}) spans x {pts[:, 0].min():.0f}..{pts[:, 0].max():.0f}, "
                f"y {pts[:, 1].min():.0f}..{pts[:, 1].max():.0f}, outside the {h}x{w} (HxW) image. Fix: "
                f"annotate the image at full resolution, or check the file belongs to this image"
            )

    items = read_geojson_polygons(path, class_names, inside_image)
    if order == "area":
        items.sort(key=lambda t: (-t[0], t[1]))
    mask = np.full((h, w), fill, np.uint8)
    for _, _, cls, rings in items:  # loop over polygons; each is rasterised vectorised
        _paint_polygon(mask, rings, cls)
    return mask


def rasterise_rings(rings: Sequence[np.ndarray], shape: tuple[int, int]) -> tuple[int, int, np.ndarray] | None:
    """Pixels whose centres lie inside a polygon with holes (even-odd rule), as a mask over its bounding box.

    A vectorised scanline fill: every edge is intersected with every pixel-centre row it spans (half-open in y,
    so shared vertices count once), each crossing toggles parity from the first pixel centre to its right, and a
    cumulative sum along x gives the inside pixels. Cost ~ edges + bounding-box pixels, independent of the vertex
    count per row, which makes large outlines with thousands of vertices cheap (``skimage.draw.polygon`` tests
    every box pixel against every edge).

    Args:
        rings: Exterior ring then holes, each ``[n, 2]`` of (x, y) in pixel-edge coordinates.
        shape: ``(H, W)`` of the image; parts outside are clipped.

    Returns:
        ``(row0, col0, inside [h, w] bool)`` or None when no pixel centre is inside.
    """
    h, w = shape
    starts = np.concatenate([np.asarray(r, np.float64) for r in rings])
    ends = np.concatenate([np.roll(np.asarray(r, np.float64), -1, axis=0) for r in rings])
    (x0, y0), (x1, y1) = starts.T, ends.T
    lo, hi = np.minimum(y0, y1), np.maximum(y0, y1)
    r0 = max(int(np.ceil(lo.min() - 0.5)), 0)
    r1 = min(int(np.ceil(hi.max() - 0.5)), h)  # rows whose centre r + 0.5 lies in [min y, max y)
    c0 = max(int(np.floor(min(x0.min(), x1.min()))), 0)
    c1 = min(int(np.ceil(max(x0.max(), x1.max()))), w)
    if r1 <= r0 or c1 <= c0:
        return None
    first = np.ceil(lo - 0.5).astype(np.int64)  # first row centre >= lo
    last = np.ceil(hi - 0.5).astype(np.int64)  # first row centre >= hi (exclusive)
    n_rows = np.clip(last, r0, r1) - np.clip(first, r0, r1)
    edge = np.repeat(np.arange(len(x0)), n_rows)
    row = np.clip(first, r0, r1)[edge] + (np.arange(edge.size) - np.repeat(np.cumsum(n_rows) - n_rows, n_rows))
    yc = row + 0.5
    t = (yc - y0[edge]) / (y1[edge] - y0[edge])  # never 0/0: horizontal edges span no rows
    xc = x0[edge] + t * (x1[edge] - x0[edge])
    col = np.clip(np.floor(xc - 0.5).astype(np.int64) + 1, c0, c1)  # first pixel whose centre is right of xc
    bw = c1 - c0 + 1
    toggles = np.bincount((row - r0) * bw + (col - c0), minlength=(r1 - r0) * bw).reshape(r1 - r0, bw)
    inside = (np.cumsum(toggles, axis=1)[:, :-1] % 2).astype(bool)
    return r0, c0, inside


def _paint_polygon(mask: np.ndarray, rings: list[np.ndarray], cls: int) -> None:
    """Set pixels whose centres fall inside the exterior ring and outside every hole to ``cls``."""
    box = rasterise_rings(rings, mask.shape)
    if box is not None:
        r0, c0, inside = box
        mask[r0 : r0 + inside.shape[0], c0 : c0 + inside.shape[1]][inside] = cls


def mask_to_geojson(
    mask: np.ndarray,
    class_map: ClassMap,
    skip_classes: Iterable[int] = (0,),
    min_area: int = 1,
) -> dict:
    """Vectorise a class-id mask into a QuPath-style GeoJSON FeatureCollection (one Polygon per region).

    Each 4-connected region of a class becomes a Polygon whose exterior follows the region's outline (via
    ``skimage.measure.find_contours`` at level 0.5 on the pixel-centre grid) and whose holes are the enclosed
    non-class areas, so re-importing with :func:`load_geojson_mask` reproduces the mask up to outline rounding.

    Args:
        mask: ``[H, W]`` class ids.
        class_map: Names and colours written into ``properties.classification``.
        skip_classes: Ids not exported (background, usually: importers fill it back in).
        min_area: Regions with fewer pixels are dropped.

    Returns:
        A GeoJSON dict ready for ``json.dump``.
    """
    features = []
    skip = set(skip_classes) | {IGNORE_INDEX}
    four = ndimage.generate_binary_structure(2, 1)
    eight = ndimage.generate_binary_structure(2, 2)
    for cls in np.unique(mask):
        if int(cls) in skip:
            continue
        labels, n = ndimage.label(mask == cls, structure=four)
        for k, sl in enumerate(ndimage.find_objects(labels), start=1):  # loop over regions, not pixels
            region = labels[sl] == k
            if region.sum() < min_area:
                continue
            oy, ox = sl[0].start, sl[1].start
            filled = ndimage.binary_fill_holes(region, structure=eight)
            rings = [_outline(filled, oy, ox)]
            holes, n_holes = ndimage.label(filled & ~region, structure=eight)
            rings += [_outline(holes == j, oy, ox, hole=True) for j in range(1, n_holes + 1)]
            name = class_map.classes[int(cls)]
            features.append(
                {
                    "type": "Feature",
                    "id": str(uuid.uuid5(uuid.NAMESPACE_OID, f"{name}/{oy}/{ox}/{k}")),
                    "geometry": {"type": "Polygon", "coordinates": rings},
                    "properties": {
                        "objectType": "annotation",
                        "classification": {
                            "name": name,
                            "color": list(class_map.colours[int(cls)]),
                            "colorRGB": qupath_color_rgb(class_map.colours[int(cls)]),
                        },
                    },
                }
            )
    return {"type": "FeatureCollection", "features": features}


def _outline(region: np.ndarray, oy: int, ox: int, hole: bool = False) -> list[list[float]]:
    """Longest closed contour of a binary region as GeoJSON ``[[x, y], ...]`` in pixel-edge coordinates."""
    padded = np.pad(region, 1).astype(np.float32)
    # Regions are 4-connected (high values face-connected); holes are 8-connected, so use the other convention.
    contours = measure.find_contours(padded, 0.5, fully_connected="high" if hole else "low")
    ring = max(contours, key=len)
    ys, xs = ring[:, 0] - 1 + oy + 0.5, ring[:, 1] - 1 + ox + 0.5
    return np.round(np.column_stack([xs, ys]), 3).tolist()


def save_geojson(path: str | os.PathLike[str], doc: dict) -> Path:
    """Write GeoJSON atomically (temp file, then rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        tmp.write_text(json.dumps(doc))
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


# ----------------------------------------------------------------------------------------------------------------
# Annotation sets.

MASK_SUFFIXES = (".png", ".geojson", ".json")


def load_mask(path: str | os.PathLike[str], shape: tuple[int, int], class_map: ClassMap, fill: int = 0) -> np.ndarray:
    """Load a PNG or GeoJSON mask by file suffix."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix == ".png":
        return load_png_mask(path, shape, class_map.n_classes, class_names=class_map.classes, colours=class_map.colours)
    if suffix in (".geojson", ".json"):
        return load_geojson_mask(path, shape, class_map.classes, fill=fill)
    raise AnnotationError(f"{path}: unsupported annotation file type {suffix!r}; expected one of {MASK_SUFFIXES}")


def match_annotations(files: Iterable[str | os.PathLike[str]], image_ids: Sequence[str]) -> dict[str, Path]:
    """Pair annotation files with images by file stem (``img_00003.png`` annotates image ``img_00003``).

    Raises:
        AnnotationError: A file for an image that does not exist, or two files for the same image.
    """
    known = set(image_ids)
    out: dict[str, Path] = {}
    for f in sorted(Path(p) for p in files):
        stem = f.name[: -len(f.suffix)] if f.suffix else f.name
        if stem not in known:
            examples = ", ".join(sorted(known)[:3]) + (", ..." if len(known) > 3 else "")
            raise AnnotationError(
                f"{f}: annotates image {stem!r}, which is not among the {len(known)} images ({examples}). Fix: name "
                f"the file after its image id, or remove annotations of images that were regenerated"
            )
        if stem in out:
            raise AnnotationError(f"{f}: image {stem!r} already annotated by {out[stem].name}; keep one file per image")
        out[stem] = f
    return out


def annotation_set_version(files: Iterable[str | os.PathLike[str]]) -> str:
    """Content hash of an annotation set: sha256 over sorted (file name, bytes); 16 hex chars.

    Names (not full paths) enter the hash so moving the folder keeps the version; a renamed or edited file
    changes it. Used as the data version that decides whether the classifier must retrain.
    """
    digest = hashlib.sha256()
    for f in sorted((Path(p) for p in files), key=lambda p: p.name):
        data = f.read_bytes()
        for part in (f.name.encode(), data):
            digest.update(len(part).to_bytes(8, "little"))
            digest.update(part)
    return digest.hexdigest()[:16]


def split_indices(
    n: int, n_train: int, n_val: int, n_test: int, seed: int = 0
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Random disjoint train / validation / test indices out of ``range(n)`` (HDGAN: 16 / 4 / 16).

    Returns:
        Three sorted int64 arrays.

    Raises:
        AnnotationError: Negative counts or more requested than available.
    """
    counts: Mapping[str, int] = {"n_train": n_train, "n_val": n_val, "n_test": n_test}
    for key, value in counts.items():
        if int(value) != value or value < 0:
            raise AnnotationError(f"{key} must be a non-negative integer, received {value!r}")
    if n_train < 1:
        raise AnnotationError("n_train must be >= 1: a classifier needs at least one annotated image")
    need = n_train + n_val + n_test
    if need > n:
        raise AnnotationError(
            f"split {n_train}/{n_val}/{n_test} (train/val/test) needs {need} annotated images, found {n}. Fix: "
            f"annotate {need - n} more images or lower the counts"
        )
    perm = np.random.default_rng(seed).permutation(n)
    parts = np.split(perm[:need], [n_train, n_train + n_val])
    return tuple(np.sort(p).astype(np.int64) for p in parts)  # type: ignore[return-value]
