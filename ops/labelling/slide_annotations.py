"""Expert annotations drawn on whole slides (QuPath GeoJSON, level-0 coordinates) turned into per-tile masks.

Pathologists annotate the slide in QuPath, not our tiles: one GeoJSON per slide whose coordinates are level-0
slide pixels (pixel-edge convention, see ``ops/labelling/geojson.py``). This module parses such a file once, cuts it
onto the kept tiles of the slide's tile table (only the polygons whose bounding box meets a tile are painted
there), and stores the tile masks in a zarr array beside the tile store, so image and mask tiles pair up by index.

Tile geometry: a tile row covers the level-0 box ``[x, x + tile_size * downsample)`` (same in y), ``downsample``
being level-0 pixels per tile pixel. The tile table stores ``level`` but not the downsample, and the two differ
when tiling resampled to a target mpp (a 0.25 µm/px slide tiled at 0.5 µm/px reads level 0 and halves it). So a
``downsample`` column is used when present; without one only level-0 rows are accepted, taken as downsample 1.

The demo has no pathologist: :func:`write_demo_slide_annotations` (a DEMO STAND-IN) labels a few tiles with the
rule-based annotator and writes them as one QuPath-style slide GeoJSON, which the import path then reads exactly
like a real export.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import zarr

from ops.labelling.class_maps import IGNORE_INDEX, AnnotationError, ClassMap
from ops.labelling.demo_annotator import DEMO_CLASS_MAP, DemoAnnotatorConfig, demo_annotate
from ops.labelling.geojson import mask_to_geojson, read_geojson_polygons, save_geojson
from ops.labelling.rasterize import paint_polygons
from ops.slides.tile_store import compressor, open_tile_array, replace_dir, temp_dir_beside

# ----------------------------------------------------------------------------------------------------------------
# Parsing.


@dataclass(frozen=True, eq=False)  # eq=False: fields hold arrays, which have no single truth value
class SlidePolygon:
    """One area annotation in level-0 slide pixel coordinates.

    Attributes:
        class_id: Position of its class in the class names.
        rings: Exterior ring then holes, each ``float64 [n, 2]`` of (x, y), pixel-edge coordinates.
        bbox: ``(x0, y0, x1, y1)`` of all its vertices.
        area: Area of the exterior ring in level-0 px² (paint order: larger first, so inner annotations win).
        position: Index of its feature in the file (tie-break, and ``order="file"``).
    """

    class_id: int
    rings: tuple[np.ndarray, ...]
    bbox: tuple[float, float, float, float]
    area: float
    position: int


def load_slide_annotations(
    path: str | os.PathLike[str],
    class_names: Sequence[str],
    slide_size: tuple[int, int] | None = None,
    tolerance: float = 1.0,
) -> list[SlidePolygon]:
    """Parse a QuPath GeoJSON drawn on a whole slide into polygons in level-0 coordinates.

    Args:
        path: GeoJSON exported from QuPath on the slide ("Export objects as GeoJSON").
        class_names: Class names; position = class id.
        slide_size: Level-0 ``(W, H)`` of the slide; when given, polygons beyond it are rejected (the usual cause is
            a file exported from another slide, or from a downsampled image of it).
        tolerance: Pixels by which coordinates may exceed the slide.

    Returns:
        Polygons in file order.

    Raises:
        AnnotationError: Missing, empty or non-JSON file; not GeoJSON; unclassified or unknown-class features (with
            a did-you-mean); non-area geometry; coordinates outside the slide.
    """
    path = Path(path)

    def inside_slide(k: int, name: str, pts: np.ndarray) -> None:
        if slide_size is None:
            return
        w, h = slide_size
        lo, hi = pts.min(0), pts.max(0)
        if (lo < -tolerance).any() or hi[0] > w + tolerance or hi[1] > h + tolerance:
            raise AnnotationError(
                f"{path}: feature {k} ({name!r}) spans x {lo[0]:.0f}..{hi[0]:.0f}, y {lo[1]:.0f}..{hi[1]:.0f}, "
                f"outside the {w}x{h} (WxH) level-0 slide: drawn on another slide or at another resolution. Fix: "
                f"export the annotations from QuPath with this slide open at full resolution (level 0), or check "
                f"the file is named after the right slide"
            )

    out = []
    for area, k, cls, rings in read_geojson_polygons(path, class_names, inside_slide):
        pts = np.concatenate(rings)
        lo, hi = pts.min(0), pts.max(0)
        bbox = (float(lo[0]), float(lo[1]), float(hi[0]), float(hi[1]))
        out.append(SlidePolygon(cls, tuple(rings), bbox, area, k))
    return out


# ----------------------------------------------------------------------------------------------------------------
# Tiles.


def tile_downsamples(tiles: pd.DataFrame) -> np.ndarray:
    """Level-0 pixels per tile pixel of each row: the ``downsample`` column, else 1 for level-0 rows.

    Raises:
        ValueError: Rows above level 0 and no ``downsample`` column (their scale cannot be known from the table).
    """
    if "downsample" in tiles.columns:
        ds = tiles["downsample"].to_numpy(np.float64)
        if not (np.isfinite(ds) & (ds > 0)).all():
            raise ValueError(f"tile table column 'downsample' must be > 0, found {np.unique(ds)[:5].tolist()}")
        return ds
    levels = tiles["level"].to_numpy() if "level" in tiles.columns else np.zeros(len(tiles), np.int64)
    if (levels != 0).any():
        raise ValueError(
            f"tile table has rows read at level(s) {sorted(set(levels[levels != 0].tolist()))} but no 'downsample' "
            f"column (level-0 pixels per tile pixel), so their level-0 footprint is unknown. Fix: add the column "
            f"(tiling plan footprint / tile_size)"
        )
    return np.ones(len(tiles))


def tile_boxes(tiles: pd.DataFrame) -> np.ndarray:
    """Level-0 ``(x0, y0, x1, y1)`` of each tile row, float64 ``[n, 4]``."""
    ds = tile_downsamples(tiles)
    x = tiles["x"].to_numpy(np.float64)
    y = tiles["y"].to_numpy(np.float64)
    side = tiles["tile_size"].to_numpy(np.float64) * ds
    return np.column_stack([x, y, x + side, y + side])


def rasterize_onto_tiles(
    polygons: Sequence[SlidePolygon],
    tiles: pd.DataFrame,
    out_size: int | None = None,
    fill: int = IGNORE_INDEX,
    order: str = "area",
) -> np.ndarray:
    """Cut slide annotations into one class-id mask per tile.

    An output pixel takes the class of the polygon containing its centre (point sampling, as the image-level
    import does), so a mask at ``out_size < tile_size`` is the full-resolution mask sampled, not a majority vote.
    A bounding-box test picks the polygons meeting each tile; each is then rasterised vectorised after mapping its
    coordinates to the tile: ``(pt - tile origin) / (downsample * tile_size / out_size)``.

    Args:
        polygons: From :func:`load_slide_annotations`.
        tiles: Tile table rows (``x``, ``y``, ``tile_size``, ``level``, optional ``downsample``).
        out_size: Mask edge in pixels; ``None`` = ``tile_size`` (must then be the same for all rows).
        fill: Id of pixels no polygon covers: ``IGNORE_INDEX`` (unlabelled) or a background class.
        order: ``"area"`` paints larger polygons first so annotations drawn inside others win; ``"file"`` paints in
            file order (later wins).

    Returns:
        ``uint8 [n_tiles, S, S]`` in the row order of ``tiles``.

    Raises:
        ValueError: Unknown ``order``, mixed tile sizes without ``out_size``, bad ``out_size`` or ``fill``.
    """
    if order not in ("area", "file"):
        raise ValueError(f"order must be 'area' or 'file', received {order!r}")
    if not 0 <= fill <= 255:
        raise ValueError(f"fill must be a uint8 class id (0..255), received {fill}")
    sizes = tiles["tile_size"].to_numpy(np.int64)
    if out_size is None:
        if len(np.unique(sizes)) > 1:
            raise ValueError(f"tiles have several sizes {np.unique(sizes).tolist()}; pass out_size")
        out_size = int(sizes[0]) if len(sizes) else 1
    if out_size < 1:
        raise ValueError(f"out_size must be >= 1 pixel, received {out_size}")
    boxes = tile_boxes(tiles)
    scale = (boxes[:, 2] - boxes[:, 0]) / out_size  # level-0 pixels per output pixel
    masks = np.full((len(tiles), out_size, out_size), fill, np.uint8)
    if not polygons or not len(tiles):
        return masks
    key = (lambda p: (-p.area, p.position)) if order == "area" else (lambda p: p.position)
    ordered = sorted(polygons, key=key)
    pb = np.array([p.bbox for p in ordered])  # [P, 4]
    for t in range(len(tiles)):  # loop over tiles x meeting polygons; never over pixels
        x0, y0, x1, y1 = boxes[t]
        meets = (pb[:, 0] < x1) & (pb[:, 2] > x0) & (pb[:, 1] < y1) & (pb[:, 3] > y0)
        origin = np.array([x0, y0])
        meeting = np.flatnonzero(meets)  # ascending = paint order
        paint_polygons(
            masks[t], [([(r - origin) / scale[t] for r in ordered[i].rings], ordered[i].class_id) for i in meeting]
        )
    return masks


def labelled_fraction(masks: np.ndarray, ignore_index: int = IGNORE_INDEX) -> np.ndarray:
    """Share of pixels that carry a label (``!= ignore_index``) in each mask of ``[n, H, W]``, float64 ``[n]``."""
    if masks.ndim != 3:
        raise ValueError(f"expected masks [n, H, W], received shape {masks.shape}")
    return (masks != ignore_index).mean(axis=(1, 2)) if masks.size else np.zeros(len(masks))


def labelled_tiles(
    masks: np.ndarray,
    tiles: pd.DataFrame,
    min_labelled: float,
    mask_store: str | os.PathLike[str] | None = None,
) -> tuple[pd.DataFrame, np.ndarray]:
    """Keep the tiles whose mask is labelled on at least ``min_labelled`` of its pixels.

    Why: a tile an annotator only grazed is mostly ``IGNORE_INDEX``; training on it costs reads and teaches little.

    Args:
        masks: ``[n, S, S]`` from :func:`rasterize_onto_tiles`, row i = ``tiles`` row i.
        tiles: The tile rows the masks were cut for.
        min_labelled: Share in [0, 1]; 0 keeps every tile.
        mask_store: Written into a ``mask_store`` column when given (where the returned masks will be stored).

    Returns:
        The kept rows (index reset) with ``labelled_fraction`` and ``mask_index`` (0..k-1, row into the returned
        masks) columns, and the kept masks ``[k, S, S]``, ready for :func:`write_mask_store`.
    """
    if len(masks) != len(tiles):
        raise ValueError(f"{len(masks)} masks for {len(tiles)} tile rows; expected one mask per row")
    if not 0 <= min_labelled <= 1:
        raise ValueError(f"min_labelled must be a share in [0, 1], received {min_labelled}")
    frac = labelled_fraction(masks)
    keep = frac >= min_labelled
    table = tiles.loc[keep].reset_index(drop=True).assign(labelled_fraction=frac[keep].astype(np.float32))
    table["mask_index"] = np.arange(len(table), dtype=np.int64)
    if mask_store is not None:
        table["mask_store"] = str(mask_store)
    return table, masks[keep]


# ----------------------------------------------------------------------------------------------------------------
# Mask store.


def write_mask_store(path: str | os.PathLike[str], masks: np.ndarray, attrs: dict | None = None) -> Path:
    """Write ``uint8 [N, S, S]`` masks as a zarr v3 array (one chunk per mask), swapped into place atomically.

    Args:
        path: Final folder of the array; an older version is replaced only once the new one is complete.
        masks: Class ids; ``IGNORE_INDEX`` = unlabelled (also the fill value).
        attrs: Stored with the array (class map name, annotation set version, ...).
    """
    masks = np.asarray(masks)
    if masks.ndim != 3 or masks.dtype != np.uint8 or masks.shape[1] != masks.shape[2]:
        raise ValueError(f"{path}: expected uint8 masks [N, S, S], received {masks.dtype} {masks.shape}")
    path = Path(path)
    tmp = temp_dir_beside(path)
    try:
        arr = zarr.create_array(
            store=str(tmp),
            shape=masks.shape,
            chunks=(1, *masks.shape[1:]),
            dtype="uint8",
            compressors=compressor(),
            fill_value=IGNORE_INDEX,
            dimension_names=("tile", "y", "x"),
            zarr_format=3,
            overwrite=True,
        )
        if len(masks):
            arr[:] = masks
        arr.attrs.update(attrs or {})
        replace_dir(tmp, path)
    except BaseException:
        import shutil

        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return path


def open_mask_array(path: str | os.PathLike[str]) -> zarr.Array:
    """Open a mask store written by :func:`write_mask_store` (read-only).

    Raises:
        FileNotFoundError: Nothing there.
        ValueError: An array that is not ``uint8 [N, S, S]``.
    """
    if not Path(path).is_dir():
        raise FileNotFoundError(f"{path}: no mask store here. Fix: write it with write_mask_store (slide annotations)")
    arr = zarr.open_array(str(path), mode="r")
    if arr.ndim != 3 or arr.dtype != np.uint8:
        raise ValueError(f"{path}: expected a uint8 [N, S, S] mask array, found {arr.dtype} {arr.shape}")
    return arr


# ----------------------------------------------------------------------------------------------------------------
# DEMO STAND-IN: "expert" slide annotations from the rule-based annotator.


def write_demo_slide_annotations(
    tiles_of_one_slide: pd.DataFrame,
    path: str | os.PathLike[str],
    class_map: ClassMap,
    n_tiles: int,
    seed: int = 0,
    mpp: float | None = None,
) -> Path:
    """DEMO STAND-IN, NOT EXPERT TRUTH: fake a pathologist's QuPath slide annotation with the rule-based annotator.

    Why: the demo has no pathologist, yet the slide-annotation import must be exercised as in production. So
    ``n_tiles`` random kept tiles (seeded) are labelled with ``demo_annotate``, every class region (background
    included, so each annotated tile is fully covered) is vectorised, shifted to level-0 slide coordinates and
    written as ONE FeatureCollection for the slide, which :func:`load_slide_annotations` then reads like a real
    export. Overlapping tiles (stride < tile size) both get annotated; larger polygons are painted first on import.

    Args:
        tiles_of_one_slide: Tile table rows of one slide (``store``, ``tile_index``, ``x``, ``y``, ``tile_size``,
            ``level``, ``mpp``, optional ``downsample``).
        path: GeoJSON to write (atomically).
        class_map: Must be the demo class map: those are the classes the stand-in annotator draws.
        n_tiles: Tiles to annotate; capped at the number of rows.
        seed: Picks the tiles.
        mpp: µm per tile pixel for the annotator's sizes; ``None`` = the table's ``mpp`` column.

    Returns:
        ``path``.

    Raises:
        ValueError: Rows of several slides, an empty table, a non-demo class map, or no mpp known.
    """
    tiles = tiles_of_one_slide
    if tiles.empty:
        raise ValueError(f"{path}: no tiles to annotate (empty tile table)")
    if "slide" in tiles.columns and tiles["slide"].nunique() > 1:
        raise ValueError(f"{path}: one annotation file per slide; tiles of {sorted(tiles['slide'].unique())} given")
    if class_map.classes != DEMO_CLASS_MAP.classes:
        raise ValueError(
            f"class map {class_map.name!r}: the demo annotator draws the classes of "
            f"{DEMO_CLASS_MAP.name!r} {DEMO_CLASS_MAP.classes}; pass that map"
        )
    rng = np.random.default_rng(seed)
    picked = np.sort(rng.choice(len(tiles), size=min(n_tiles, len(tiles)), replace=False))
    ds = tile_downsamples(tiles)
    features: list[dict] = []
    for i in picked.tolist():  # loop over tiles; annotation and vectorisation are vectorised inside
        row = tiles.iloc[i]
        tile_mpp = mpp if mpp is not None else float(row.get("mpp", np.nan))
        if not np.isfinite(tile_mpp) or tile_mpp <= 0:
            raise ValueError(f"{path}: tile {i} has no mpp in the table; pass mpp (µm per tile pixel)")
        image = np.asarray(open_tile_array(row["store"])[int(row["tile_index"])])
        labels = demo_annotate(image, DemoAnnotatorConfig(mpp=tile_mpp))
        doc = mask_to_geojson(labels, class_map, skip_classes=())
        origin = np.array([float(row["x"]), float(row["y"])])
        for feature in doc["features"]:
            rings = feature["geometry"]["coordinates"]
            feature["geometry"]["coordinates"] = [
                np.round(origin + np.asarray(r, np.float64) * ds[i], 3).tolist() for r in rings
            ]
            feature["id"] = str(uuid.uuid5(uuid.NAMESPACE_OID, f"{row['x']}/{row['y']}/{feature['id']}"))
            features.append(feature)
    return save_geojson(path, {"type": "FeatureCollection", "features": features})
