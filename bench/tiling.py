"""Tiling + background filtering vs a naive full-resolution scan, vs the decode floor, and the tile store's size.

    python bench/tiling.py [--workers 2] [--slide demo_03] [--repeats 3]     # the 8k² demo slide only
    python bench/tiling.py --big [--repeats 1]                               # + a 65,536 x 49,152 slide
    python bench/tiling.py --big --build-only                                # only build (and cache) the big slide

All three contenders run on the same slide, with the same dask workers:

- naive: every grid tile read at full resolution through openslide ``read_region``, whitespace checked per tile,
  kept tiles written with the same store step (``extract_tiles`` with every grid position a candidate);
- project: low-resolution tissue mask + candidate grid, candidates decoded directly (``decoder=auto``), QC, write
  (JPEG tile store: the slide's own JPEG tiles copied where the grid lines up with them);
- floor: the kept tiles decoded once, nothing else (what any tiler that stores decoded pixels must at least pay).

The project run happens in a fresh child process per repeat, so its peak RSS is the tiler's own (not the naive
run's, nor the bench's). ``store_ratio`` = tile-store bytes / slide file bytes.

The big slide (``--big``) is assembled once from the demo slides' own JPEG tiles (real IHC tissue; see
``bench/big_slide.py``) at 0.25 µm/px with a 4x pyramid and about two thirds glass, and cached in
``$HISTOFACTORY_BENCH_CACHE`` (default ``~/.cache/histofactory``). It is tiled at its native 0.25 µm/px (40x tiles,
as CLAM does at level 0): 512-px tiles, 12,288 grid positions.

Last line, machine-readable, for the big slide when ``--big`` is given (else for the demo slide):
``speedup=<x> decode_ratio=<x> store_ratio=<x> jaccard=<x> rss_mb=<x> tiles_per_s_core=<x>``.
Times are medians over ``--repeats``.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import dask

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import child_process  # noqa: E402 - bench/ is on sys.path when a script runs
from big_slide import build_big_slide  # noqa: E402

from ops.slides.demo_slides import DEMO_SLIDES, write_demo_slide  # noqa: E402
from ops.slides.extraction import extract_tiles  # noqa: E402
from ops.slides.reader import open_slide  # noqa: E402
from ops.slides.tiling import ParallelSpec, TilingParams, params_from_dict, plan_grid  # noqa: E402

DEMO_CACHE = Path(__file__).resolve().parent / "out"
BIG_CACHE = Path(os.environ.get("HISTOFACTORY_BENCH_CACHE", Path.home() / ".cache" / "histofactory"))
BIG_NAME = "bench_big_65536x49152.svs"


def big_slide() -> Path:
    """The cached big slide, assembled on first use from the demo slides' JPEG tiles (``bench/big_slide.py``)."""
    path = BIG_CACHE / BIG_NAME
    if not path.exists():
        print(f"building {path} (once; about a minute) ...", flush=True)
        start = time.perf_counter()
        build_big_slide([demo_slide(s.name) for s in DEMO_SLIDES[:3]], path)
        print(f"built in {time.perf_counter() - start:.0f} s ({path.stat().st_size / 1e6:.0f} MB)", flush=True)
    return path


def demo_slide(name: str) -> Path:
    spec = next(s for s in DEMO_SLIDES if s.name == name)
    path = DEMO_CACHE / f"{spec.name}.svs"
    if not path.exists():
        print(f"writing {path} ...", flush=True)
        write_demo_slide(spec, DEMO_CACHE)
    return path


def _kept(res) -> set:
    return set(zip(res.table.x, res.table.y, strict=True))


def _project_child(spec: dict) -> dict:
    """One project run in this (fresh) process: wall time, kept set, store bytes, peak RSS."""
    params = params_from_dict(spec["params"])
    par = ParallelSpec(workers=spec["workers"], scheduler=spec["scheduler"])
    start, cpu = time.perf_counter(), time.process_time()
    with open_slide(spec["slide"], decoder=params.decoder) as reader:
        plan = plan_grid(reader, params)
    res = extract_tiles(spec["slide"], plan, params, par, spec["out"], "bench", "sl-bench")
    seconds = time.perf_counter() - start
    return {
        "seconds": seconds,
        "cpu_seconds": time.process_time() - cpu,
        "kept": sorted(map(list, _kept(res))),
        "candidates": int(plan.grid.candidate.sum()),
        "grid": len(plan.grid),
        "read_level": plan.read_level,
        "store_bytes": res.store_bytes,
        "rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "copied": int(res.counts.get("copied", 0)),
    }


def _naive(slide: Path, params: TilingParams, par: ParallelSpec, out: Path) -> set:
    params = replace(params, decoder="openslide")
    with open_slide(slide, decoder="openslide") as reader:
        plan = plan_grid(reader, params)  # only for the grid geometry; every position is decoded below
    plan.grid["candidate"] = True
    return _kept(extract_tiles(str(slide), plan, params, par, out, "bench", "sl-bench"))


def _floor(slide: Path, kept: set, params: TilingParams, read_level: int, par: ParallelSpec) -> None:
    coords = sorted(kept)
    n = par.workers * 4
    chunks = [coords[i::n] for i in range(n)]

    def decode(chunk: list) -> int:
        with open_slide(slide, mpp_override=params.mpp_override) as reader:
            for x, y in chunk:
                reader.read_region(int(x), int(y), read_level, params.tile_size, params.tile_size)
        return len(chunk)

    dask.compute(*[dask.delayed(decode)(c) for c in chunks if c], scheduler="threads", num_workers=par.workers)


def _median_time(fn, repeats: int):
    """Median wall and CPU seconds (all threads of this process) of ``fn`` over ``repeats``, and its last value."""
    walls, cpus, value = [], [], None
    for _ in range(repeats):
        start, cpu = time.perf_counter(), time.process_time()
        value = fn()
        walls.append(time.perf_counter() - start)
        cpus.append(time.process_time() - cpu)
    return statistics.median(walls), statistics.median(cpus), value


def measure(slide: Path, params: TilingParams, par: ParallelSpec, repeats: int, skip_naive: bool) -> dict:
    """Naive, project (child processes) and floor on one slide; prints a block and returns the figures."""
    with tempfile.TemporaryDirectory(dir=slide.parent) as tmp:
        tmp = Path(tmp)
        spec = {
            "slide": str(slide),
            "params": params.to_dict(),
            "workers": par.workers,
            "scheduler": par.scheduler,
            "out": str(tmp / "project"),
        }
        runs = [child_process.run_child(__file__, spec, f"project on {slide.name}") for _ in range(repeats)]
        proj = runs[-1]
        t_proj = statistics.median(r["seconds"] for r in runs)
        c_proj = statistics.median(r["cpu_seconds"] for r in runs)
        kept_proj = {tuple(k) for k in proj["kept"]}
        t_floor, c_floor, _ = _median_time(lambda: _floor(slide, kept_proj, params, proj["read_level"], par), repeats)
        if skip_naive:
            t_naive, c_naive, kept_naive = float("nan"), float("nan"), kept_proj
        else:
            t_naive, c_naive, kept_naive = _median_time(lambda: _naive(slide, params, par, tmp / "naive"), repeats)
    union = kept_naive | kept_proj
    out = {
        "speedup": t_naive / t_proj,
        "decode_ratio": t_proj / t_floor,
        "store_ratio": proj["store_bytes"] / slide.stat().st_size,
        "jaccard": len(kept_naive & kept_proj) / len(union) if union else 1.0,
        "rss_mb": proj["rss_mb"],
        "tiles_per_s_core": proj["candidates"] / t_proj / par.workers,
    }
    background = 1 - len(kept_naive) / proj["grid"]
    print(
        f"slide {slide.name} ({slide.stat().st_size / 1e6:.0f} MB): {proj['grid']} grid tiles, "
        f"{proj['candidates']} candidates, {len(kept_naive)} kept by naive, {len(kept_proj)} by project, "
        f"{proj['copied']} copied as JPEG bytes ({background:.0%} of the grid not kept)"
    )
    print("  wall s / CPU s (CPU: all threads; on a shared machine the CPU figures are the stable ones)")
    print(f"  naive   {t_naive:8.2f} / {c_naive:8.2f}  (openslide read_region of every grid tile + check + write)")
    print(f"  project {t_proj:8.2f} / {c_proj:8.2f}  (low-res mask, decode candidates only, QC, write)")
    print(f"  floor   {t_floor:8.2f} / {c_floor:8.2f}  (decode the kept tiles once)")
    print(f"  peak RSS of the project run {out['rss_mb']:.0f} MB")
    print(f"  cpu: speedup_cpu={c_naive / c_proj:.2f} decode_ratio_cpu={c_proj / c_floor:.2f}")
    print(f"  store   {proj['store_bytes'] / 1e6:8.1f} MB  (tile store; slide {slide.stat().st_size / 1e6:.1f} MB)")
    print("  " + _line(out), flush=True)
    return out


def _line(fig: dict) -> str:
    return " ".join(
        f"{k}={fig[k]:.{2 if k not in ('jaccard',) else 4}f}"
        for k in ("speedup", "decode_ratio", "store_ratio", "jaccard", "rss_mb", "tiles_per_s_core")
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--slide", default="demo_03", choices=[s.name for s in DEMO_SLIDES])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--scheduler", default="threads", choices=["threads", "processes"])
    ap.add_argument("--big", action="store_true", help="also measure the 65,536 x 49,152 slide (built once)")
    ap.add_argument("--build-only", action="store_true", help="with --big: build the big slide and stop")
    ap.add_argument("--skip-naive-big", action="store_true", help="skip the (slow) naive run on the big slide")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        print(json.dumps(_project_child(json.loads(args.child))))
        return
    if args.big and args.build_only:
        big_slide()
        return
    par = ParallelSpec(workers=args.workers, scheduler=args.scheduler)
    print(f"workers={args.workers} scheduler={args.scheduler} repeats={args.repeats}")
    fig = measure(demo_slide(args.slide), TilingParams(), par, args.repeats, skip_naive=False)
    if args.big:
        demo_rss = fig["rss_mb"]
        fig = measure(big_slide(), TilingParams(target_mpp=0.25), par, args.repeats, args.skip_naive_big)
        print(f"peak RSS big / demo = {fig['rss_mb'] / demo_rss:.2f} (goal <= 1.5)")
    print(_line(fig))


if __name__ == "__main__":
    main()
