"""Per-slide tiling assets: ``tile_grid`` (cheap: mask + candidate grid) and ``tissue_tiles`` (decode, filter, store).

Heavy outputs are written through ``FactoryStorage``; each asset hands on a typed reference to them
(``resources.references``), never the tiles themselves.
"""

import json
import time
import warnings
from pathlib import Path
from typing import Literal

import dagster as dg
import numpy as np
import pandas as pd
from pydantic import Field

from assets.gates import gate, latest_metadata, number
from assets.lineage import content_hash, package_versions, png_markdown, tile_set_hash
from assets.partitions import slide_partitions
from ops.slides.crops import split_tiles
from ops.slides.extraction import extract_tiles, grid_thumbnail
from ops.slides.reader import Decoder, open_slide
from ops.slides.tile_store import DEFAULT_JPEG_QUALITY, replace_dir, temp_dir_beside
from ops.slides.tiling import TilingParams, load_plan, params_from_dict, plan_grid, save_plan
from ops.slides.tissue import TissueMaskParams
from ops.slides.validation import validate_slide
from resources import DaskResource, FactoryStorage
from resources.references import TileGridRef, TissueTilesRef, TrainingTilesRef

TILING_CODE_VERSION = "tiling-3"  # 3: JPEG tile stores (slide bytes copied), validation at the door
# Unchanged from when the split lived beside the GAN assets, so a split made then is not reported stale.
SPLIT_CODE_VERSION = "gan-1"


class TissueMaskConfig(dg.Config):
    """Tissue detection on the low-resolution level (see ``ops.slides.tissue.TissueMaskParams``)."""

    mask_downsample: float = Field(default=32.0, ge=1, description="Downsample of the mask image vs level 0 (32-64).")
    saturation_threshold: float | None = Field(
        default=None,
        ge=0,
        le=1,
        description="Fixed HSV-saturation threshold in [0, 1]; unset = Otsu floored at min_saturation.",
    )
    min_saturation: float = Field(default=0.05, ge=0, le=1, description="Lowest threshold Otsu may choose.")
    max_saturation: float = Field(default=0.07, ge=0, le=1, description="Highest threshold Otsu may choose.")
    median_size: int = Field(default=7, ge=1, description="Median filter edge, mask pixels.")
    close_radius: int = Field(default=2, ge=0, description="Morphological closing radius, mask pixels.")
    min_tissue_area_um2: float = Field(
        default=20_000.0, ge=0, description="Smaller tissue pieces and holes are removed."
    )


class TileGridConfig(dg.Config):
    """Tile geometry, chosen once per slide by ``tile_grid`` and reused by ``tissue_tiles``."""

    tile_size: int = Field(default=512, ge=1, description="Tile edge in pixels at the target resolution (paper: 4096).")
    stride: int | None = Field(
        default=None, ge=1, description="Step between tiles in target pixels; unset = tile_size."
    )
    target_mpp: float | None = Field(
        default=0.5, gt=0, description="Microns per pixel of the tiles; unset = tile at `level` without resizing."
    )
    level: int = Field(default=0, ge=0, description="Pyramid level used when target_mpp is unset.")
    mpp_override: float | None = Field(
        default=None,
        gt=0,
        description="Microns per level-0 pixel for slides that record none (0.25 at 40x, 0.5 at 20x).",
    )
    min_candidate_tissue: float = Field(
        default=0.2, ge=0, le=1, description="Low-res tissue share a grid tile needs to be decoded at all."
    )
    mask: TissueMaskConfig = TissueMaskConfig()


class TileFilterConfig(dg.Config):
    """Per-tile checks at full resolution (see ``ops.slides.tiling.TilingParams``)."""

    max_whitespace: float = Field(default=0.5, ge=0, le=1, description="Largest whitespace fraction of a kept tile.")
    white_saturation: float = Field(default=0.05, ge=0, le=1, description="Whitespace pixel: saturation below this ...")
    white_value: int = Field(default=200, ge=0, le=255, description="... and brightness (0-255) above this.")
    blur_threshold: float = Field(default=20.0, ge=0, description="Variance of Laplacian below this = blurry.")
    pen_fraction: float = Field(default=0.05, ge=0, le=1, description="Pen-ink pixel share above this = pen-marked.")
    drop_blurry: bool = Field(default=True, description="Drop blurry tiles (else only flag them).")
    drop_pen: bool = Field(default=True, description="Drop pen-marked tiles (else only flag them).")
    decoder: Decoder = Field(
        default="auto", description="auto (direct TIFF tile decoding when possible), openslide or tifffile."
    )
    tile_codec: Literal["jpeg", "blosc"] = Field(
        default="jpeg", description="jpeg (compact; the slide's JPEG tiles copied where aligned) or blosc (lossless)."
    )
    jpeg_quality: int = Field(
        default=DEFAULT_JPEG_QUALITY,
        ge=1,
        le=100,
        description="JPEG quality (1-100) of re-encoded tiles; copied tiles keep theirs.",
    )


def _grid_params(config: TileGridConfig) -> TilingParams:
    values = config.model_dump()
    values["mask"] = TissueMaskParams(**values["mask"])
    return TilingParams(**values)


@dg.asset(
    partitions_def=slide_partitions,
    group_name="slides",
    code_version=TILING_CODE_VERSION,
    kinds={"python", "parquet"},
    description="Tissue mask on a low-resolution level and the candidate tile grid (never reads level 0).",
)
def tile_grid(
    context: dg.AssetExecutionContext, config: TileGridConfig, storage: FactoryStorage
) -> dg.MaterializeResult:
    key = context.partition_key
    entry, path = storage.slide(key)
    params = _grid_params(config)
    start = time.perf_counter()
    validate_slide(path, mpp_override=params.mpp_override)  # a broken file fails here, named, with the fix
    with open_slide(path, mpp_override=params.mpp_override) as reader:
        plan = plan_grid(reader, params)
        info = reader.info
    save_plan(plan, params, storage.grid_dir(key))
    n_cand = int(plan.grid["candidate"].sum())
    if n_cand == 0:
        context.log.warning(f"{path}: no tissue found on the low-resolution level; this slide yields no tiles.")
    version = entry.sha256[:16] + "-" + content_hash(params.to_dict())
    return dg.MaterializeResult(
        value=TileGridRef(path=str(storage.grid_dir(key)), slide_id=entry.slide_id, content_hash=version),
        metadata={
            "slide_id": entry.slide_id,
            "grid_tiles": len(plan.grid),
            "candidates": n_cand,
            "read_level": plan.read_level,
            "tile_mpp": plan.tile_mpp if plan.tile_mpp else float("nan"),
            "mask_threshold": plan.threshold,
            "tissue_share": float(plan.mask.mean()) if plan.mask.size else 0.0,
            "vendor": info.vendor,
            "slide_dimensions": f"{info.level_dimensions[0][0]} x {info.level_dimensions[0][1]}",
            "seconds": round(time.perf_counter() - start, 3),
            "path": dg.MetadataValue.path(str(storage.grid_dir(key))),
            "mask_preview": png_markdown(grid_thumbnail(plan), "tissue mask and candidate grid"),
            "config": dg.MetadataValue.json(params.to_dict()),
        },
        data_version=dg.DataVersion(version),
    )


@dg.asset(
    partitions_def=slide_partitions,
    group_name="slides",
    code_version=TILING_CODE_VERSION,
    kinds={"python", "zarr", "parquet"},
    description="Candidate tiles decoded at full resolution, whitespace/QC filtered, stored in zarr with a table.",
)
def tissue_tiles(
    context: dg.AssetExecutionContext,
    config: TileFilterConfig,
    tile_grid: TileGridRef,
    storage: FactoryStorage,
    dask: DaskResource,
) -> dg.MaterializeResult:
    key = context.partition_key
    entry, path = storage.slide(key)
    plan, grid_values = load_plan(Path(tile_grid.path))
    params = params_from_dict({**grid_values, **config.model_dump()})
    n_cand = int(plan.grid["candidate"].sum())
    storage.require_free_disk(n_cand * params.tile_size**2 * 3, f"tissue_tiles for {key} ({n_cand} tiles)")
    start = time.perf_counter()

    def progress(done: int, total: int) -> None:
        if done == total or done % max(1, total // 4) == 0:
            context.log.info(f"{key}: {done}/{total} tile batches decoded")

    result = extract_tiles(str(path), plan, params, dask.spec(), storage.tiles_dir(key), key, entry.slide_id, progress)
    seconds = time.perf_counter() - start
    counts = result.counts
    if counts["kept"] == 0:
        context.log.warning(f"{path}: no tile passed the filters (counts: {counts}); the tile store is empty.")
    if counts["corrupt"]:
        context.log.warning(f"{path}: {counts['corrupt']} tiles had corrupt image data and were skipped.")
    hist, edges = np.histogram(result.table["tissue_fraction"], bins=10, range=(0, 1))
    version = content_hash(result.table[["x", "y", "tissue_fraction"]].to_dict("list"))
    return dg.MaterializeResult(
        value=TissueTilesRef(
            path=str(result.out_dir),
            slide_id=entry.slide_id,
            kept=counts["kept"],
            resolution=params.tile_size,
            content_hash=version,
        ),
        metadata={
            "slide_id": entry.slide_id,
            "kept": counts["kept"],
            "dropped": dg.MetadataValue.json({k: v for k, v in counts.items() if k not in ("kept", "grid", "copied")}),
            "grid_tiles": counts["grid"],
            "decoded_tiles": len(result.candidates),
            "tissue_fraction_histogram": dg.MetadataValue.json(
                {f"{edges[i]:.1f}-{edges[i + 1]:.1f}": int(hist[i]) for i in range(len(hist))}
            ),
            "tiles_per_second": round(len(result.candidates) / max(seconds, 1e-9), 2),
            "seconds": round(seconds, 3),
            "tile_store": dg.MetadataValue.path(str(result.out_dir / "tiles.zarr")),
            "store_encoding": result.encoding,
            "store_mb": round(result.store_bytes / 1e6, 2),
            "store_ratio": round(result.store_ratio, 4),
            "copied_tiles": counts["copied"],
            "tile_table": dg.MetadataValue.path(str(result.out_dir / "tiles.parquet")),
            "kept_grid": png_markdown(result.thumbnail_png, "kept tiles (green) on the slide thumbnail"),
            "config": dg.MetadataValue.json(params.to_dict()),
            "package_versions": dg.MetadataValue.json(package_versions()),
            "code_version": TILING_CODE_VERSION,
        },
        data_version=dg.DataVersion(version),
    )


class TrainingSplitConfig(dg.Config):
    """Slide-level (or patient-level) k-fold split of the kept tiles."""

    folds: int = Field(default=5, ge=1, description="Folds; fewer slides than folds -> one fold per slide.")
    holdout_fold: int = Field(default=0, ge=0, description="The fold held out from GAN training.")
    seed: int = Field(default=0, description="Seeds the fold assignment.")
    patients_csv: str | None = Field(
        default=None, description="CSV with columns slide,patient: split by patient instead of slide."
    )
    spatial_holdout: float = Field(default=0.2, ge=0, lt=1, description="With one slide: share of its width held out.")


@dg.asset(
    group_name="slides",
    code_version=SPLIT_CODE_VERSION,
    kinds={"python", "parquet"},
    description="Kept tiles of every slide partition with a slide-level train / hold-out split.",
)
def training_tiles(
    context: dg.AssetExecutionContext,
    config: TrainingSplitConfig,
    tissue_tiles: dict[str, TissueTilesRef] | None,
    storage: FactoryStorage,
) -> dg.MaterializeResult:
    keys = sorted(context.instance.get_dynamic_partitions(slide_partitions.name))
    tiled = tissue_tiles or {}
    tables = [pd.read_parquet(tiled[k].table).assign(store=str(tiled[k].store)) for k in keys if k in tiled]
    missing = [k for k in keys if k not in tiled]
    if missing:
        context.log.warning(f"slides without materialized tissue_tiles are left out: {missing}")
    if not tables:
        raise ValueError("no slide has materialized tissue_tiles; run the `tiling` job for the slides first")
    tiles = pd.concat(tables, ignore_index=True)
    patients = None
    if config.patients_csv:
        table = pd.read_csv(config.patients_csv)
        if not {"slide", "patient"} <= set(table.columns):
            raise ValueError(f"{config.patients_csv}: expected columns slide,patient; found {list(table.columns)}")
        patients = dict(zip(table["slide"].astype(str), table["patient"].astype(str), strict=True))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        split = split_tiles(tiles, config.folds, config.holdout_fold, config.seed, patients, config.spatial_holdout)
    for w in caught:
        context.log.warning(str(w.message))
    out = pd.concat([split.train.assign(split="train"), split.holdout.assign(split="holdout")], ignore_index=True)
    tmp = temp_dir_beside(storage.training_dir)
    out.to_parquet(tmp / "tiles.parquet", index=False)
    (tmp / "split.json").write_text(
        json.dumps(
            {"folds": split.folds, "k": split.k, "mode": split.mode, "holdout_fold": config.holdout_fold}, indent=1
        )
    )
    replace_dir(tmp, storage.training_dir)
    per_slide = out.groupby(["slide", "split"]).size().unstack(fill_value=0)
    version = tile_set_hash(out)
    return dg.MaterializeResult(
        value=TrainingTilesRef(path=str(storage.training_dir / "tiles.parquet"), content_hash=version),
        metadata={
            "train_tiles": len(split.train),
            "holdout_tiles": len(split.holdout),
            "slides": len(tables),
            "split_mode": split.mode,
            "k": split.k,
            "per_slide": dg.MetadataValue.md(f"```\n{per_slide.to_string()}\n```"),
            "path": dg.MetadataValue.path(str(storage.training_dir / "tiles.parquet")),
        },
        data_version=dg.DataVersion(version),
    )


# ----------------------------------------------------------------------------------------------------------------
# Quality gates (see assets/gates.py): per slide, read from the partition's own materialization.


class TissueFoundGate(dg.Config):
    """Threshold of ``tile_grid``'s ``tissue_found`` gate."""

    min_candidates: int = Field(
        default=1, ge=0, description="Fewest candidate tiles (tissue on the low-res mask) a slide must yield."
    )


@dg.asset_check(
    asset=tile_grid,
    blocking=True,
    description="Blocks decoding a slide whose low-resolution mask found no tissue (nothing would be kept).",
)
def tissue_found(context: dg.AssetCheckExecutionContext, config: TissueFoundGate) -> dg.AssetCheckResult:
    meta = latest_metadata(context, tile_grid.key)
    candidates = number(meta, "candidates", "tile_grid")
    return gate("candidates", candidates, ">=", "min_candidates", config.min_candidates, "tissue on the slide")


@dg.asset_check(
    asset=tile_grid,
    description="Warns when the tiles have no physical scale (the slide records no mpp and none was given).",
)
def mpp_known(context: dg.AssetCheckExecutionContext) -> dg.AssetCheckResult:
    tile_mpp = number(latest_metadata(context, tile_grid.key), "tile_mpp", "tile_grid")
    return gate("tile_mpp", tile_mpp, ">", "min_tile_mpp", 0.0, "microns per pixel known", blocking=False)


class TilesKeptGate(dg.Config):
    """Threshold of ``tissue_tiles``' ``tiles_kept`` gate."""

    min_kept: int = Field(default=1, ge=0, description="Fewest tiles a slide must keep after the QC filters.")


@dg.asset_check(
    asset=tissue_tiles,
    blocking=True,
    description="Blocks downstream use of a slide that kept no tile after whitespace, blur and pen filtering.",
)
def tiles_kept(context: dg.AssetCheckExecutionContext, config: TilesKeptGate) -> dg.AssetCheckResult:
    kept = number(latest_metadata(context, tissue_tiles.key), "kept", "tissue_tiles")
    return gate("kept", kept, ">=", "min_kept", config.min_kept, "tiles kept after QC")
