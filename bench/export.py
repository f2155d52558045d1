"""Synthetic image-mask pairs per second, and whether peak memory stays flat as the number of samples grows.

    python bench/export.py [--quick] [--device auto] [--n-demo 1000 4000] [--n-256 100 400] [--threads T]

For the demo (64 px) and the 256-px generator preset, a fresh subprocess per (preset, N) runs the loop the
``synthetic_dataset`` asset runs per partition, over N / batch_size batches: ``synthesize_batch`` (per image:
generator, last-5-block features upsampled, ensemble probabilities, JS-divergence uncertainty), ``uncertain_to_drop``
and ``write_batch`` (image and mask PNGs, latents, manifest) into a temporary folder. It reports pairs/s and its peak
RSS (``ru_maxrss``); ``rss_growth`` = peak RSS at the larger N / at the smaller N - 1, which must stay near 0 because
each image's features are computed, classified and dropped. The memorization check of the asset is not included.

Weights do not change the speed: the demo generator is the shipped checkpoint
(``resources/pretrained/gan_demo.pt``) when present, otherwise random, and the 256-px one is random; the ensemble is
the pipeline's shape (10 MLPs features->128->32->6 demo classes) with random weights, sized for the generator's
features (demo 408, 256-px preset 736 per pixel).

Baseline in the same child: generation alone (``generate``, one image at a time as ``synthesize_batch`` does), so
``vs_generation`` = pairs/s / generated images/s shows what labelling, uncertainty and writing cost on top.

The 256-px preset defaults to fewer samples (100 vs 400) than the demo (1000 vs 4000): at ~3 s per pair on one CPU
core, 1k + 4k would take four hours; pass ``--n-256 1000 4000`` on a GPU. Last line (demo preset, larger N):
``pairs_per_s=<x> rss_growth=<max over presets>``. Timings are wall-clock on a shared machine: compare ratios.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import child_process  # noqa: E402 - bench/ is on sys.path when a script runs

from ops.common.device import pick_device  # noqa: E402
from ops.export.gan_route import ExportParams, sample_id, synthesize_batch, uncertain_to_drop, write_batch  # noqa: E402
from ops.gan.networks import Generator, get_gan_config  # noqa: E402
from ops.gan.sampling import generate  # noqa: E402
from ops.gan.trainer import load_generator  # noqa: E402
from ops.labelling.demo_annotator import DEMO_CLASS_MAP  # noqa: E402
from ops.labelling.pixel_classifier import EnsembleConfig, MLPConfig, PixelEnsemble  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
CACHE = Path(__file__).resolve().parent / "out"
PRETRAINED = ROOT / "resources" / "pretrained" / "gan_demo.pt"


def _generator(preset: str, device: torch.device, checkpoint: str) -> tuple[Generator, str]:
    if preset == "demo" and Path(checkpoint).exists():
        return load_generator(checkpoint, device), f"checkpoint {checkpoint}"
    torch.manual_seed(0)
    return Generator(get_gan_config(preset)).to(device).eval().requires_grad_(False), "random weights"


def child(spec: dict) -> None:
    """Entry point of ``--child``: export ``n`` pairs of one preset into a temp folder; prints one JSON line."""
    torch.set_num_threads(spec["threads"])
    device = pick_device(spec["device"])
    G, origin = _generator(spec["preset"], device, spec["generator"])
    # No colour matching: it needs a factory's training tiles; this bench times generation and labelling.
    params = ExportParams(batch_size=spec["batch_size"], match_pool=0)
    n_features = sum(G.block_channels[-params.blocks :])
    ensemble = PixelEnsemble(EnsembleConfig(MLPConfig(n_features, DEMO_CLASS_MAP.n_classes), 10)).to(device).eval()
    palette = DEMO_CLASS_MAP.palette()
    n_gen = max(4, min(spec["n"] // 10, 50))
    start = time.perf_counter()
    generate(G, np.arange(n_gen) + 10**9, params.psi, device)  # baseline: generation alone, one image at a time
    gen_per_s = n_gen / (time.perf_counter() - start)
    written = 0
    with tempfile.TemporaryDirectory(dir=spec["out"]) as tmp:
        start = time.perf_counter()
        for b in range(spec["n"] // params.batch_size):
            batch = synthesize_batch(G, ensemble, b, params, device)
            keep = ~uncertain_to_drop(batch.uncertainty, params.drop_uncertain)
            rows = pd.DataFrame(
                {
                    "sample_id": [sample_id(s) for s in batch.seeds],
                    "batch": b,
                    "seed": batch.seeds,
                    "uncertainty": batch.uncertainty,
                }
            )
            out = Path(tmp) / f"{b:05d}"
            written += len(write_batch(out, batch, keep, rows, palette))
        seconds = time.perf_counter() - start
        bytes_written = sum(p.stat().st_size for p in Path(tmp).rglob("*") if p.is_file())
    n = spec["n"] // params.batch_size * params.batch_size
    print(
        json.dumps(
            {
                "pairs_per_s": n / seconds,
                "gen_per_s": gen_per_s,
                "kept": written,
                "n": n,
                "bytes": bytes_written,
                "origin": origin,
                "n_features": n_features,
                "peak_rss": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
            }
        )
    )


def run_child(spec: dict) -> dict:
    return child_process.run_child(__file__, spec, f"{spec['preset']} n={spec['n']}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument(
        "--quick",
        action="store_true",
        help="demo 100 vs 400 pairs (batches of 25), 256-px preset 4 vs 16 (batches of 2), 1 thread",
    )
    ap.add_argument("--device", default="auto", help="auto | cpu | cuda[:i]")
    ap.add_argument("--n-demo", type=int, nargs=2, default=None, help="pairs, small and large (default 1000 4000)")
    ap.add_argument("--n-256", type=int, nargs=2, default=None, help="pairs, small and large (default 100 400)")
    ap.add_argument(
        "--threads",
        type=int,
        default=None,
        help="torch threads (default: torch's; quick: 1, since on a shared 2-core machine two OpenMP "
        "threads under nice wait on each other)",
    )
    ap.add_argument("--generator", default=str(PRETRAINED), help="demo generator checkpoint (random when missing)")
    ap.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        child(json.loads(args.child))
        return
    threads = args.threads or (1 if args.quick else torch.get_num_threads())
    sizes = {
        "demo": args.n_demo or ([100, 400] if args.quick else [1000, 4000]),
        "256": args.n_256 or ([4, 16] if args.quick else [100, 400]),
    }
    # full: the demo preset's synthetic_dataset batch (100). Quick: smaller batches, so the small run too has several
    # batches (the allocator settles over the first few; one batch vs four would read that warm-up as growth)
    batch_size = {"demo": 25 if args.quick else 100, "256": 2 if args.quick else 100}
    device = pick_device(args.device)
    print(f"device {device}, torch threads {threads}, load average {os.getloadavg()[0]:.1f}", flush=True)
    CACHE.mkdir(parents=True, exist_ok=True)
    results: dict[str, dict[int, dict]] = {}
    for preset, ns in sizes.items():
        results[preset] = {}
        for n in ns:
            r = run_child(
                {
                    "preset": preset,
                    "n": n,
                    "batch_size": min(batch_size[preset], n),
                    "device": str(device),
                    "threads": threads,
                    "out": str(CACHE),
                    "generator": args.generator,
                }
            )
            results[preset][n] = r
            print(
                f"{preset:>4} preset ({r['origin']}, {r['n_features']} features/px) N={r['n']:5d}: "
                f"{r['pairs_per_s']:7.2f} pairs/s, generation alone {r['gen_per_s']:7.2f} img/s "
                f"(vs_generation={r['pairs_per_s'] / r['gen_per_s']:.3f}); kept {r['kept']}, "
                f"{r['bytes'] / 2**20:.1f} MiB written; peak RSS {r['peak_rss'] / 2**20:.0f} MiB",
                flush=True,
            )
    growth = {}
    for preset, by_n in results.items():
        small, large = by_n[min(by_n)], by_n[max(by_n)]
        growth[preset] = large["peak_rss"] / small["peak_rss"] - 1
        print(
            f"{preset:>4} preset: peak RSS {min(by_n)} -> {max(by_n)} pairs: {growth[preset]:+.1%}; pairs/s "
            f"{large['pairs_per_s'] / small['pairs_per_s']:.2f}x of the small run"
        )
    head = results["demo"][max(results["demo"])]
    print(f"pairs_per_s={head['pairs_per_s']:.2f} rss_growth={max(growth.values()):.3f}")


if __name__ == "__main__":
    main()
