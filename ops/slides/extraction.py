"""From a grid plan to a finished tile store on disk: kept tiles (zarr), tile table and QC table (parquet).

The output folder is assembled in a temp folder beside its final place and swapped in at the end, so a crash
leaves the previous version intact and re-running is idempotent.
"""

from __future__ import annotations

import io
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image, ImageDraw

from ops.slides.tile_store import compact, create_tile_array, replace_dir, store_bytes, temp_dir_beside
from ops.slides.tiling import GridPlan, ParallelSpec, TilingParams, run_filter, store_encoding

TILE_TABLE = "tiles.parquet"
QC_TABLE = "candidates.parquet"
TILE_STORE = "tiles.zarr"
THUMBNAIL = "thumbnail.png"
STATUSES = ("kept", "whitespace", "pen", "blurry", "corrupt")


@dataclass(frozen=True)
class ExtractionResult:
    """Where the outputs went and what happened to each candidate."""

    out_dir: Path
    table: pd.DataFrame  # kept tiles, row i = tiles[i]
    candidates: pd.DataFrame  # every decoded candidate with its status
    counts: dict[str, int]  # grid / not_candidate / per status / copied (kept tiles stored as the slide's bytes)
    thumbnail_png: bytes
    store_bytes: int  # bytes of the tile store on disk
    store_ratio: float  # store bytes / slide file bytes (what an archive of slides will cost in tile stores)
    encoding: str  # e.g. "jpeg q95 (inner 256 px, ycbcr)" or "blosc"


def extract_tiles(
    slide_path: str,
    plan: GridPlan,
    params: TilingParams,
    parallel: ParallelSpec,
    out_dir: str | os.PathLike[str],
    slide_key: str,
    slide_id: str,
    progress: Callable[[int, int], None] | None = None,
) -> ExtractionResult:
    """Decode candidates, keep tissue tiles, and write ``out_dir`` atomically.

    Args:
        slide_path: The slide file.
        plan: The grid plan from ``plan_grid``.
        params: Tiling parameters (the same as for the plan).
        parallel: Dask settings.
        out_dir: Final folder; replaced as a whole.
        slide_key: The slide's partition key (kept inside the factory).
        slide_id: The slide's opaque content id (what leaves the factory).
        progress: Called with (tasks done, tasks total).
    """
    out_dir = Path(out_dir)
    tmp = temp_dir_beside(out_dir)
    try:
        n_cand = int(plan.grid["candidate"].sum())
        encoding = store_encoding(slide_path, params, plan.read_level, plan.read_size)
        create_tile_array(tmp / TILE_STORE, n_cand, params.tile_size, encoding)
        cands = run_filter(slide_path, plan, params, str(tmp / TILE_STORE), parallel, progress)
        kept = cands[cands["status"] == "kept"].sort_values("slot")
        arr = compact(tmp / TILE_STORE, kept["slot"].to_numpy())
        table = pd.DataFrame(
            {
                "tile_index": np.arange(len(kept), dtype=np.int64),
                "slide": slide_key,
                "slide_id": slide_id,
                "level": np.int16(plan.read_level),
                "x": kept["x"].to_numpy(np.int64),
                "y": kept["y"].to_numpy(np.int64),
                "tile_size": np.int32(params.tile_size),
                "downsample": np.float32(plan.footprint / params.tile_size),  # level-0 pixels per tile pixel
                "mpp": np.float32(plan.tile_mpp) if plan.tile_mpp else np.float32("nan"),
                "tissue_fraction": (1 - kept["whitespace_fraction"].to_numpy()).astype(np.float32),
                "candidate_tissue": kept["candidate_tissue"].to_numpy(np.float32),
                "blur": kept["blur"].to_numpy(np.float32),
                "pen_fraction": kept["pen_fraction"].to_numpy(np.float32),
            }
        )
        arr.attrs.update(
            {
                "slide_id": slide_id,
                "tile_size": params.tile_size,
                "mpp": plan.tile_mpp,
                "read_level": plan.read_level,
                "copied_from_slide": int(kept["copied"].sum()),
            }
        )
        _write_parquet(table, tmp / TILE_TABLE)
        _write_parquet(cands.drop(columns=["candidate"]), tmp / QC_TABLE)
        thumb = grid_thumbnail(plan, cands)
        (tmp / THUMBNAIL).write_bytes(thumb)
        n_bytes = store_bytes(tmp / TILE_STORE)
        replace_dir(tmp, out_dir)
    except BaseException:
        import shutil

        shutil.rmtree(tmp, ignore_errors=True)
        raise
    counts = {"grid": len(plan.grid), "not_candidate": int((~plan.grid["candidate"]).sum())}
    counts.update({s: int((cands["status"] == s).sum()) for s in STATUSES})
    counts["copied"] = int(kept["copied"].sum())
    if encoding.codec == "jpeg":
        label = f"jpeg q{encoding.quality} (inner {encoding.inner or params.tile_size} px, {encoding.colorspace})"
    else:
        label = "blosc-lz4 (lossless)"
    ratio = n_bytes / max(os.path.getsize(slide_path), 1)
    return ExtractionResult(out_dir, table, cands, counts, thumb, n_bytes, ratio, label)


def _write_parquet(df: pd.DataFrame, path: Path) -> None:
    df.to_parquet(path, index=False)


def grid_thumbnail(plan: GridPlan, candidates: pd.DataFrame | None = None, max_side: int = 768) -> bytes:
    """PNG of the low-res slide with the tissue mask tinted and the grid drawn: kept green, dropped red/orange.

    Without ``candidates`` (before the per-tile pass), every candidate is drawn in blue.
    """
    # Resize first, tint after: the mask image of a 100k-px slide is ~3k px, and a float copy of it is 100 MB.
    h, w = plan.mask.shape
    scale = max_side / max(w, h)  # small masks are enlarged too, so the grid stays readable in the UI
    size = (max(1, int(w * scale)), max(1, int(h * scale)))
    rgb = np.asarray(Image.fromarray(plan.mask_rgb).resize(size, Image.Resampling.BILINEAR)).astype(np.float32)
    mask = np.asarray(Image.fromarray(plan.mask).resize(size, Image.Resampling.NEAREST))
    rgb[mask] = rgb[mask] * 0.8 + np.array([0, 0, 255]) * 0.2
    img = Image.fromarray(rgb.clip(0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(img)
    k = scale / plan.mask_downsample  # level-0 pixels -> thumbnail pixels
    size = plan.footprint * k
    colours = {
        "kept": (0, 170, 0),
        "whitespace": (220, 60, 60),
        "pen": (255, 140, 0),
        "blurry": (200, 0, 200),
        "corrupt": (0, 0, 0),
    }
    rows = candidates if candidates is not None else plan.grid[plan.grid["candidate"]].assign(status="candidate")
    for x, y, status in zip(rows["x"], rows["y"], rows["status"], strict=True):
        draw.rectangle([x * k, y * k, x * k + size, y * k + size], outline=colours.get(status, (40, 80, 220)))
    buf = io.BytesIO()
    img.save(buf, format="PNG", compress_level=1)  # fast; it is a preview
    return buf.getvalue()
