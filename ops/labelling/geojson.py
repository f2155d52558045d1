"""Vector annotations in QuPath GeoJSON: parsing (with every problem reported against the file) and writing.

QuPath exports area annotations as a FeatureCollection (or a Feature, or a bare list of Features, by version) whose
features carry ``properties.classification.name``. Parsing turns them into polygons (rings of (x, y) points) of a
class; :func:`load_geojson_mask` rasterises them onto an image; :func:`mask_to_geojson` goes the other way, so a
mask can be opened and corrected in QuPath.

Coordinates: QuPath GeoJSON uses pixel-edge coordinates (pixel ``(col, row)`` covers ``[col, col+1)``), so a pixel
belongs to a polygon when its centre ``(col + 0.5, row + 0.5)`` is inside it.
"""

from __future__ import annotations

import json
import os
import uuid
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import shapely
import shapely.errors
from scipy import ndimage
from skimage import measure

from ops.labelling.class_maps import (
    IGNORE_INDEX,
    AnnotationError,
    ClassMap,
    read_annotation_bytes,
    unknown_class_message,
)
from ops.labelling.rasterize import paint_polygons


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


def _ring(ring: Any) -> np.ndarray:
    """One ring as float64 ``[n, 2]`` (x, y); a z coordinate is dropped, anything but a list of positions refused."""
    points = np.asarray(ring, np.float64)
    if points.ndim != 2 or points.shape[1] not in (2, 3):
        raise ValueError(f"a ring must be a list of [x, y] positions, found nesting of shape {points.shape}")
    return points[:, :2]


def _polygons_of(geometry: Any, path: Path, k: int) -> list[shapely.Polygon]:
    """The polygons of a Polygon/MultiPolygon geometry; degenerate rings (< 3 vertices) are dropped."""
    kind = geometry.get("type") if isinstance(geometry, dict) else None
    if kind not in ("Polygon", "MultiPolygon"):
        raise AnnotationError(
            f"{path}: feature {k} has geometry {kind!r}; expected Polygon or MultiPolygon (areas). Fix: export "
            f"only area annotations (no points, lines or detections)"
        )
    try:
        coords = geometry["coordinates"]
        polygons = []
        for poly in [coords] if kind == "Polygon" else coords:
            # A stray click makes a ring of 1-2 vertices: QuPath exports it, nothing can be painted, so it is skipped.
            rings = [_ring(ring) for ring in poly]
            if rings and len(rings[0]) >= 3:
                polygons.append(shapely.Polygon(rings[0], [r for r in rings[1:] if len(r) >= 3]))
        return polygons
    except (KeyError, TypeError, ValueError, shapely.errors.ShapelyError) as exc:
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
    raw = read_annotation_bytes(path, "a GeoJSON annotation")
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
            raise AnnotationError(unknown_class_message(name, class_names, f"{path}: feature {k}: "))
        cls = list(class_names).index(name)
        for polygon in _polygons_of(feature.get("geometry"), path, k):
            rings = [shapely.get_coordinates(ring) for ring in (polygon.exterior, *polygon.interiors)]
            if check is not None:
                check(k, name, np.concatenate(rings))
            items.append((shapely.Polygon(polygon.exterior).area, k, cls, rings))
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
    return paint_polygons(np.full((h, w), fill, np.uint8), [(rings, cls) for _, _, cls, rings in items])


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
