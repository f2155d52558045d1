"""WSI tiling with background filtering in two passes.

1. ``plan_grid``: a tissue mask on a low-resolution level plus the tile grid at the target resolution; each grid
   position gets the tissue share of its footprint in the mask. Only candidates (share above a small floor) go on.
2. ``filter_tiles``: decode candidates at full resolution, measure each tile's whitespace fraction and QC flags
   (blur, pen ink, corrupt JPEG data), and write kept tiles into a zarr array. Runs on dask (threads, processes,
   or a distributed cluster): each task opens its own slide handle, since native handles do not pickle.

Units: grid positions are level-0 pixels; ``tile_size``/``stride`` are pixels at the target resolution
(``target_mpp`` microns per pixel, or a pyramid ``level``).
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
import pandas as pd
from PIL import Image

from ops.slides.jpeg_codec import decode_jpeg
from ops.slides.reader import Decoder, SlideError, SlideReader, open_slide
from ops.slides.tile_store import DEFAULT_JPEG_QUALITY, TileEncoding, TileWriter
from ops.slides.tissue import TissueMaskParams, read_lowres, tissue_mask

Scheduler = Literal["threads", "processes", "synchronous"]


@dataclass(frozen=True)
class TilingParams:
    """Tile geometry and the per-tile filter.

    Attributes:
        tile_size: Tile edge in pixels at the target resolution (demo 512; HDGAN used 4096).
        stride: Step between tiles in target pixels; ``None`` = ``tile_size`` (no overlap).
        target_mpp: Microns per pixel of the output tiles; ``None`` means use ``level`` as is.
        level: Pyramid level to tile at when ``target_mpp`` is ``None``.
        mpp_tolerance: Relative mpp difference accepted without resizing (scanners report 0.2499 vs 0.25).
        mpp_override: Microns per level-0 pixel for slides that do not record it.
        min_candidate_tissue: Share of a tile's footprint that must be tissue in the low-res mask for it to be
            decoded at all. Low on purpose: the mask is coarse, the full-resolution check decides.
        max_whitespace: Largest whitespace fraction a kept tile may have (histolab keeps >= 80% tissue, i.e. 0.2).
        white_saturation: A pixel is whitespace when its HSV saturation is below this ...
        white_value: ... and its brightness (max of R, G, B) is above this.
        blur_threshold: Tiles whose variance of Laplacian (grey, 0-255) is below this are flagged blurry.
        pen_fraction: Tiles with more than this share of pen-ink pixels (saturated green/blue/black) are flagged.
        drop_blurry: Drop blurry tiles (otherwise only flag them in the table).
        drop_pen: Drop pen-marked tiles (otherwise only flag them).
        decoder: ``auto`` (direct TIFF tile decode when possible), ``openslide`` or ``tifffile``.
        tile_codec: How kept tiles are stored: ``jpeg`` (compact; the slide's own JPEG tiles copied where the grid
            lines up with them) or ``blosc`` (lossless, ~6x the slide's bytes).
        jpeg_quality: JPEG quality (1-100) for tiles that are re-encoded (resized or not aligned with the slide's
            tiles); copied tiles keep the slide's own quality.
        mask: Tissue-mask parameters.
    """

    tile_size: int = 512
    stride: int | None = None
    target_mpp: float | None = 0.5
    level: int = 0
    mpp_tolerance: float = 0.1
    mpp_override: float | None = None
    min_candidate_tissue: float = 0.2
    max_whitespace: float = 0.5
    white_saturation: float = 0.05
    white_value: int = 200
    blur_threshold: float = 20.0
    pen_fraction: float = 0.05
    drop_blurry: bool = True
    drop_pen: bool = True
    decoder: Decoder = "auto"
    tile_codec: Literal["jpeg", "blosc"] = "jpeg"
    jpeg_quality: int = DEFAULT_JPEG_QUALITY
    mask: TissueMaskParams = field(default_factory=TissueMaskParams)

    def __post_init__(self) -> None:
        if self.tile_size < 16:
            raise ValueError(f"tile_size must be >= 16 pixels, received {self.tile_size}")
        if self.stride is not None and self.stride <= 0:
            raise ValueError(f"stride must be > 0 pixels or None, received {self.stride}")
        if not 0 <= self.max_whitespace <= 1:
            raise ValueError(f"max_whitespace must be in [0, 1], received {self.max_whitespace}")
        TileEncoding(codec=self.tile_codec, quality=self.jpeg_quality)  # validates both, naming the option

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class GridPlan:
    """The result of the cheap pass: where to read, and which grid positions are worth decoding."""

    grid: pd.DataFrame  # one row per grid position: x, y (level 0), candidate_tissue, candidate
    read_level: int
    read_size: int  # pixels read at read_level per tile (resized to tile_size when different)
    tile_size: int
    tile_mpp: float | None
    footprint: float  # level-0 pixels covered by one tile's edge
    mask: np.ndarray  # low-res boolean tissue mask
    mask_rgb: np.ndarray  # the low-res image it came from (for thumbnails)
    mask_downsample: float
    threshold: float


def choose_level(reader: SlideReader, params: TilingParams) -> tuple[int, float, float | None]:
    """Pick the pyramid level to read from and the target downsample (vs level 0).

    Returns:
        (level, target_downsample, tile_mpp).

    Raises:
        SlideError: a target mpp was asked for but the slide records no mpp and none was given.
    """
    info = reader.info
    if params.target_mpp is None:
        if not 0 <= params.level < len(info.level_downsamples):
            raise SlideError(
                f"{info.path}: level {params.level} does not exist (the slide has levels "
                f"0..{len(info.level_downsamples) - 1})."
            )
        ds = info.level_downsamples[params.level]
        return params.level, ds, (info.mpp * ds if info.mpp else None)
    if info.mpp is None:
        raise SlideError(
            f"{info.path}: the slide records no microns-per-pixel, so target_mpp={params.target_mpp} cannot be "
            "honoured. Set mpp_override (microns per level-0 pixel, e.g. 0.25 for 40x, 0.5 for 20x), or tile by "
            "level with target_mpp=None."
        )
    target_ds = params.target_mpp / info.mpp
    ok = [i for i, d in enumerate(info.level_downsamples) if d <= target_ds * (1 + params.mpp_tolerance)]
    level = max(ok, key=lambda i: info.level_downsamples[i]) if ok else 0
    return level, target_ds, params.target_mpp


def plan_grid(reader: SlideReader, params: TilingParams) -> GridPlan:
    """Compute the tissue mask and the candidate grid; never reads level 0 of a pyramidal slide."""
    level, target_ds, tile_mpp = choose_level(reader, params)
    level_ds = reader.info.level_downsamples[level]
    ratio = target_ds / level_ds
    read_size = params.tile_size if abs(ratio - 1) <= params.mpp_tolerance else int(round(params.tile_size * ratio))
    rgb, mask_ds = read_lowres(reader, params.mask.mask_downsample)
    mask_mpp = reader.info.mpp * mask_ds if reader.info.mpp else None
    mask, threshold = tissue_mask(rgb, mask_mpp, params.mask)

    width0, height0 = reader.info.level_dimensions[0]
    footprint = params.tile_size * target_ds  # level-0 pixels covered by one tile
    step = (params.stride or params.tile_size) * target_ds
    nx = int(math.floor((width0 - footprint) / step)) + 1 if width0 >= footprint else 0
    ny = int(math.floor((height0 - footprint) / step)) + 1 if height0 >= footprint else 0
    gy, gx = np.meshgrid(np.arange(ny) * step, np.arange(nx) * step, indexing="ij")
    xs, ys = np.round(gx.ravel()).astype(np.int64), np.round(gy.ravel()).astype(np.int64)
    share = _footprint_share(mask, xs, ys, footprint, mask_ds)
    grid = pd.DataFrame({"x": xs, "y": ys, "candidate_tissue": share.astype(np.float32)})
    grid["candidate"] = grid["candidate_tissue"] >= params.min_candidate_tissue
    return GridPlan(grid, level, read_size, params.tile_size, tile_mpp, footprint, mask, rgb, mask_ds, threshold)


def _footprint_share(mask: np.ndarray, xs: np.ndarray, ys: np.ndarray, footprint: float, ds: float) -> np.ndarray:
    """Mean of ``mask`` over each tile footprint, vectorised with a summed-area table."""
    if len(xs) == 0:
        return np.zeros(0)
    # int32 holds any mask's count (a 100k-px slide's mask is ~3k x 3k) at half the memory of int64.
    sat = np.zeros((mask.shape[0] + 1, mask.shape[1] + 1), np.int32)
    np.cumsum(mask, axis=0, dtype=np.int32, out=sat[1:, 1:])
    np.cumsum(sat[1:, 1:], axis=1, dtype=np.int32, out=sat[1:, 1:])
    h, w = mask.shape
    x0 = np.clip(np.floor(xs / ds).astype(int), 0, w)
    y0 = np.clip(np.floor(ys / ds).astype(int), 0, h)
    x1 = np.clip(np.ceil((xs + footprint) / ds).astype(int), 0, w)
    y1 = np.clip(np.ceil((ys + footprint) / ds).astype(int), 0, h)
    area = np.maximum((x1 - x0) * (y1 - y0), 1)
    return (sat[y1, x1] - sat[y0, x1] - sat[y1, x0] + sat[y0, x0]) / area


# -- the per-tile pass ----------------------------------------------------------------------------------------------
def tile_qc(tile: np.ndarray, params: TilingParams) -> dict[str, float]:
    """Whitespace fraction, blur (variance of Laplacian) and pen-ink fraction of one RGB tile."""
    assert tile.ndim == 3 and tile.shape[-1] == 3, f"expected [H, W, 3], received {tile.shape}"
    # Every measure is taken on the half-resolution view (every second pixel): the shares and the Laplacian
    # variance are as good there (65k pixels of a 512-px tile). The channels are copied out once and everything
    # after is integer arithmetic on contiguous planes: on a strided [H, W, 3] view the same checks cost more than
    # decoding the tile (measured 8 ms vs 6 ms on these machines), which set the tiler's floor.
    r, g, b = (np.ascontiguousarray(tile[::2, ::2, i]).astype(np.int16) for i in range(3))
    hi, lo = np.maximum(np.maximum(r, g), b), np.minimum(np.minimum(r, g), b)
    spread = hi - lo  # saturation = spread / hi
    # saturation < s  <=>  spread < s * hi  (no division)
    white = (spread < params.white_saturation * hi.astype(np.float32)) & (hi > params.white_value)
    grey = r * np.float32(0.299) + g * np.float32(0.587) + b * np.float32(0.114)  # ITU-R 601 luma
    lap = grey[:-2, 1:-1] + grey[2:, 1:-1] + grey[1:-1, :-2] + grey[1:-1, 2:] - 4 * grey[1:-1, 1:-1]
    # Pen ink: green or blue dominating red clearly (H&E/IHC stains are red/brown/purple), or near-black.
    pen = ((g > r + 30) & (g > b)) | ((b > r + 40) & (b > g + 20) & (2 * spread > hi)) | (hi < 50)
    return {"whitespace_fraction": float(white.mean()), "blur": float(lap.var()), "pen_fraction": float(pen.mean())}


def filter_tiles(
    slide_path: str, rows: pd.DataFrame, params: TilingParams, read_level: int, read_size: int, store_path: str | None
) -> pd.DataFrame:
    """Decode the grid rows of one task, QC them, write kept tiles into the store at their ``slot``.

    Where the store's JPEG inner chunks are the slide's own tiles and a grid tile is exactly a block of them, the
    tile is decoded from the slide's compressed streams and, if kept, those streams are copied into the store
    (``copied=True``): QC sees exactly the pixels the store holds, and nothing is re-encoded.

    A tile whose JPEG data is corrupt is recorded with ``status='corrupt'`` and skipped: one bad tile never fails a
    slide. Returns one row per input row with the measurements and the decision.
    """
    reader = open_slide(slide_path, mpp_override=params.mpp_override, decoder=params.decoder)
    writer = TileWriter(store_path) if store_path else None
    colorspace = _copyable(reader, writer, read_level, read_size, params.tile_size)
    out: list[dict] = []
    try:
        for slot, x, y in zip(rows["slot"].to_numpy(), rows["x"].to_numpy(), rows["y"].to_numpy(), strict=True):
            streams = reader.jpeg_streams(int(x), int(y), read_level, read_size) if colorspace else None
            try:
                if streams:
                    tile = _decode_block(streams, writer.inner_tiles, colorspace)
                else:
                    tile = reader.read_region(int(x), int(y), read_level, read_size, read_size)
            except Exception as exc:  # libjpeg/openslide errors on damaged tile data
                out.append(
                    {"slot": slot, "status": "corrupt", "error": f"{type(exc).__name__}: {exc}"[:200], "copied": False}
                )
                reader.close()  # an openslide handle stays in error state after a failed read
                reader = open_slide(slide_path, mpp_override=params.mpp_override, decoder=params.decoder)
                continue
            if read_size != params.tile_size:
                tile = np.asarray(Image.fromarray(tile).resize((params.tile_size,) * 2, Image.Resampling.LANCZOS))
            qc = tile_qc(tile, params)
            status = _decide(qc, params)
            if status == "kept" and writer is not None:
                if streams:
                    writer.copy(int(slot), streams)
                else:
                    writer.write(int(slot), tile)
            out.append({"slot": slot, "status": status, "error": "", "copied": bool(streams), **qc})
    finally:
        reader.close()
    return pd.DataFrame(out)


def _copyable(
    reader: SlideReader, writer: TileWriter | None, read_level: int, read_size: int, tile_size: int
) -> str | None:
    """The colour coding of the slide's JPEG tiles when they can go into ``writer``'s store as they are."""
    if writer is None or writer.jpeg is None or read_size != tile_size:
        return None
    layout = reader.jpeg_layout(read_level)
    if layout is None or layout[0] != writer.inner or layout[1] != writer.jpeg.colorspace:
        return None
    return layout[1]


def _decode_block(streams: list[bytes], per_side: int, colorspace: str) -> np.ndarray:
    """Decode ``per_side**2`` JPEG streams (row-major) into one tile."""
    first = decode_jpeg(streams[0], colorspace)
    edge = first.shape[0]
    tile = np.empty((edge * per_side, edge * per_side, 3), np.uint8)
    for i, stream in enumerate(streams):
        y, x = divmod(i, per_side)
        tile[y * edge : (y + 1) * edge, x * edge : (x + 1) * edge] = (
            first if i == 0 else decode_jpeg(stream, colorspace)
        )
    return tile


def store_encoding(slide_path: str, params: TilingParams, read_level: int, read_size: int) -> TileEncoding:
    """The store encoding for a slide: JPEG inner chunks = the slide's own JPEG tiles when their bytes can be copied."""
    if params.tile_codec == "blosc":
        return TileEncoding(codec="blosc")
    with open_slide(slide_path, mpp_override=params.mpp_override, decoder=params.decoder) as reader:
        layout = reader.jpeg_layout(read_level)
    if layout and read_size == params.tile_size and params.tile_size % layout[0] == 0:
        return TileEncoding(quality=params.jpeg_quality, colorspace=layout[1], inner=layout[0])
    return TileEncoding(quality=params.jpeg_quality)


def _decide(qc: dict[str, float], params: TilingParams) -> str:
    if qc["whitespace_fraction"] > params.max_whitespace:
        return "whitespace"
    if params.drop_pen and qc["pen_fraction"] > params.pen_fraction:
        return "pen"
    if params.drop_blurry and qc["blur"] < params.blur_threshold:
        return "blurry"
    return "kept"


@dataclass(frozen=True)
class ParallelSpec:
    """How the per-tile pass runs on dask.

    Attributes:
        workers: Worker threads/processes for the local schedulers.
        scheduler: ``threads`` (default: JPEG decoding releases the GIL, no pickling), ``processes`` or
            ``synchronous`` (debugging).
        address: A dask distributed scheduler address (``tcp://host:8786``); when set, tasks run on that cluster.
        tasks_per_worker: Tasks per worker; more tasks balance uneven tissue better, fewer cost less overhead.
    """

    workers: int = 2
    scheduler: Scheduler = "threads"
    address: str | None = None
    tasks_per_worker: int = 4


def run_filter(
    slide_path: str,
    plan: GridPlan,
    params: TilingParams,
    store_path: str | None,
    parallel: ParallelSpec,
    progress: Callable[[int, int], None] | None = None,
) -> pd.DataFrame:
    """Run ``filter_tiles`` over all candidates in parallel; returns the candidates with measurements.

    ``store_path`` must hold a tiles array with one slot per candidate (``slot`` = candidate order).
    """
    import dask

    cands = plan.grid[plan.grid["candidate"]].reset_index(drop=True)
    cands["slot"] = np.arange(len(cands))
    if cands.empty:
        return cands.assign(
            status=pd.Series(dtype=str),
            error=pd.Series(dtype=str),
            copied=pd.Series(dtype=bool),
            **{c: pd.Series(dtype=np.float64) for c in ("whitespace_fraction", "blur", "pen_fraction")},
        )
    n_tasks = min(len(cands), max(1, parallel.workers * parallel.tasks_per_worker))
    chunks = [cands.iloc[i::n_tasks] for i in range(n_tasks)]  # interleaved: tissue is spread evenly
    tasks = [
        dask.delayed(filter_tiles)(
            slide_path, c[["slot", "x", "y"]], params, plan.read_level, plan.read_size, store_path
        )
        for c in chunks
    ]
    if parallel.address:
        from distributed import Client, as_completed

        with Client(parallel.address) as client:
            futures = client.compute(tasks)
            results = []
            for done, fut in enumerate(as_completed(futures), 1):
                results.append(fut.result())
                if progress:
                    progress(done, len(tasks))
    else:
        results = _compute_local(tasks, parallel, progress)
    measured = pd.concat(results, ignore_index=True)
    return cands.merge(measured, on="slot", how="left").sort_values("slot").reset_index(drop=True)


def _compute_local(tasks: list, parallel: ParallelSpec, progress: Callable[[int, int], None] | None) -> list:
    import dask
    from dask.callbacks import Callback

    class _Progress(Callback):
        def __init__(self) -> None:
            super().__init__()
            self.done = 0

        def _posttask(self, key, result, dsk, state, id) -> None:  # noqa: A002 - dask's signature
            if isinstance(result, pd.DataFrame):
                self.done += 1
                if progress:
                    progress(self.done, len(tasks))

    kwargs = {"scheduler": parallel.scheduler}
    if parallel.scheduler != "synchronous":
        kwargs["num_workers"] = parallel.workers
    with _Progress():
        return list(dask.compute(*tasks, **kwargs))


# -- persisting the plan between the two assets ---------------------------------------------------------------------
PLAN_FILE = "plan.json"
GRID_FILE = "grid.parquet"
MASK_FILE = "mask.npz"


def save_plan(plan: GridPlan, params: TilingParams, out_dir: str | os.PathLike[str]) -> None:
    """Write the plan (grid table, mask, geometry and the parameters that made it) to ``out_dir`` atomically."""
    from ops.slides.tile_store import replace_dir, temp_dir_beside

    tmp = temp_dir_beside(out_dir)
    plan.grid.to_parquet(tmp / GRID_FILE, index=False)
    np.savez_compressed(tmp / MASK_FILE, mask=plan.mask, rgb=plan.mask_rgb)
    meta = {
        "read_level": plan.read_level,
        "read_size": plan.read_size,
        "tile_size": plan.tile_size,
        "tile_mpp": plan.tile_mpp,
        "footprint": plan.footprint,
        "mask_downsample": plan.mask_downsample,
        "threshold": plan.threshold,
        "params": params.to_dict(),
    }
    (tmp / PLAN_FILE).write_text(json.dumps(meta, indent=1))
    replace_dir(tmp, out_dir)


def load_plan(out_dir: str | os.PathLike[str]) -> tuple[GridPlan, dict]:
    """Read a plan written by ``save_plan``; returns it with the parameter dict that made it."""
    out_dir = Path(out_dir)
    if not (out_dir / PLAN_FILE).exists():
        raise FileNotFoundError(
            f"{out_dir}: no tile grid here. Materialize `tile_grid` for this slide partition first."
        )
    meta = json.loads((out_dir / PLAN_FILE).read_text())
    arrays = np.load(out_dir / MASK_FILE)
    plan = GridPlan(
        grid=pd.read_parquet(out_dir / GRID_FILE),
        read_level=meta["read_level"],
        read_size=meta["read_size"],
        tile_size=meta["tile_size"],
        tile_mpp=meta["tile_mpp"],
        footprint=meta["footprint"],
        mask=arrays["mask"],
        mask_rgb=arrays["rgb"],
        mask_downsample=meta["mask_downsample"],
        threshold=meta["threshold"],
    )
    return plan, meta["params"]


def params_from_dict(values: dict) -> TilingParams:
    """Rebuild ``TilingParams`` from ``to_dict`` output (the nested mask parameters included)."""
    values = dict(values)
    values["mask"] = TissueMaskParams(**values.get("mask", {}))
    return TilingParams(**values)
