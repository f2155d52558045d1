"""Tiling + background filtering vs a naive full-resolution scan, and vs the decode floor.

    python bench/tiling.py [--workers 2] [--slide demo_03] [--repeats 3]

All three contenders run in this process, on the same slide, with the same dask workers:

- naive: every grid tile read at full resolution through openslide ``read_region``, whitespace checked per tile,
  kept tiles written with the same zarr write step (``extract_tiles`` with every grid position a candidate);
- project: low-resolution tissue mask + candidate grid, candidates decoded directly (``decoder=auto``), QC, write;
- floor: the kept tiles decoded once, nothing else (what any tiler must at least pay).

Prints the kept-set Jaccard between naive and project (must be >= 0.99), and a last machine-readable line:
``speedup=<naive/project> decode_ratio=<project/floor> jaccard=<x>``. Times are medians over ``--repeats``.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import dask

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ops.slides.demo_slides import DEMO_SLIDES, write_demo_slide  # noqa: E402
from ops.slides.extraction import extract_tiles  # noqa: E402
from ops.slides.reader import open_slide  # noqa: E402
from ops.slides.tiling import ParallelSpec, TilingParams, plan_grid  # noqa: E402

CACHE = Path(__file__).resolve().parent / "out"


def _project(slide: Path, params: TilingParams, par: ParallelSpec, out: Path) -> set:
    with open_slide(slide, decoder=params.decoder) as reader:
        plan = plan_grid(reader, params)
    res = extract_tiles(str(slide), plan, params, par, out, "bench", "sl-bench")
    return set(zip(res.table.x, res.table.y, strict=True))


def _naive(slide: Path, params: TilingParams, par: ParallelSpec, out: Path) -> set:
    params = replace(params, decoder="openslide")
    with open_slide(slide, decoder="openslide") as reader:
        plan = plan_grid(reader, params)  # only for the grid geometry; every position is decoded below
    plan.grid["candidate"] = True
    res = extract_tiles(str(slide), plan, params, par, out, "bench", "sl-bench")
    return set(zip(res.table.x, res.table.y, strict=True))


def _floor(slide: Path, kept: set, tile: int, par: ParallelSpec) -> None:
    coords = sorted(kept)
    chunks = [coords[i :: par.workers * 4] for i in range(par.workers * 4)]

    def decode(chunk: list) -> int:
        with open_slide(slide) as reader:
            for x, y in chunk:
                reader.read_region(int(x), int(y), 0, tile, tile)
        return len(chunk)

    dask.compute(*[dask.delayed(decode)(c) for c in chunks if c], scheduler="threads", num_workers=par.workers)


def _time(fn, repeats: int):
    times, value = [], None
    for _ in range(repeats):
        start = time.perf_counter()
        value = fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times), value


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--slide", default="demo_03", choices=[s.name for s in DEMO_SLIDES])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--scheduler", default="threads", choices=["threads", "processes"])
    args = ap.parse_args()

    spec = next(s for s in DEMO_SLIDES if s.name == args.slide)
    slide = CACHE / f"{spec.name}.svs"
    if not slide.exists():
        print(f"writing {slide} ...", flush=True)
        write_demo_slide(spec, CACHE)
    params = TilingParams()
    par = ParallelSpec(workers=args.workers, scheduler=args.scheduler)
    with tempfile.TemporaryDirectory(dir=CACHE) as tmp:
        tmp = Path(tmp)
        t_naive, kept_naive = _time(lambda: _naive(slide, params, par, tmp / "naive"), args.repeats)
        t_proj, kept_proj = _time(lambda: _project(slide, params, par, tmp / "project"), args.repeats)
        t_floor, _ = _time(lambda: _floor(slide, kept_proj, params.tile_size, par), args.repeats)
    with open_slide(slide) as reader:
        plan = plan_grid(reader, params)
    union = kept_naive | kept_proj
    jaccard = len(kept_naive & kept_proj) / len(union) if union else 1.0
    background = 1 - len(kept_naive) / len(plan.grid)
    print(
        f"slide {slide.name}: {len(plan.grid)} grid tiles, {int(plan.grid.candidate.sum())} candidates, "
        f"{len(kept_naive)} kept by naive, {len(kept_proj)} by project ({background:.0%} of the grid not kept)"
    )
    print(f"workers={args.workers} scheduler={args.scheduler} repeats={args.repeats}")
    print(f"naive   {t_naive:7.3f} s  (openslide read_region of every grid tile + per-tile check + write)")
    print(f"project {t_proj:7.3f} s  (low-res mask, decode candidates only, QC, write)")
    print(f"floor   {t_floor:7.3f} s  (decode the kept tiles once)")
    print(f"speedup={t_naive / t_proj:.2f} decode_ratio={t_proj / t_floor:.2f} jaccard={jaccard:.4f}")


if __name__ == "__main__":
    main()
