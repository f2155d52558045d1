"""GAN throughput (training and sampling images/s) and demo-config quality relative to the held-out noise floor.

    python bench/gan.py [--quick] [--device auto] [--kimg 2.0] [--slide demo_03]

Real crops come from the tiles of one demo slide (written and tiled into bench/out/ on first use), split spatially
into a training half (left) and a held-out half (right), as ``split_tiles`` does for a single slide.

Throughput, for the demo (64 px) and the 256-px preset, on the CPU and on CUDA when it is available:

- train: ``GanTrainer.train_step`` as the pipeline runs it (G step with style mixing, D step, lazy R1, EMA, ADA),
  real crops read from the tile store every step. Baseline in the same run: the bare non-saturating G + D step of
  the same networks (no ADA, no R1, no style mixing) -> ``train_vs_bare`` is what the StyleGAN2-ADA extras cost;
- sample: ``generate`` from G_ema (mapping + synthesis + uint8 conversion, no gradients), batched.

Quality (demo config): fine-tune from ``resources/pretrained/gan_demo.pt`` (a freshly initialised generator when it
is missing; the output says so) for ``--kimg`` thousand real images (default: the demo preset's ``gan_model.kimg``),
then ``swd_floor_ratio`` = max over Laplacian-pyramid levels of SWD(samples, held-out A) / SWD(held-out A, held-out
B), and the same for an untrained generator (``untrained_floor_ratio``). 1.0 means samples are as close to the
held-out crops as other held-out crops are; the untrained value is the ceiling fine-tuning must come down from.

Timings are wall-clock on whatever else the machine runs; compare ratios within one run, not absolute numbers
across runs. ``--quick`` uses one torch thread: on a shared 2-core machine, two OpenMP threads under ``nice`` wait on
each other (measured 20-100x slower there).

Last line (demo config, on the preferred device: CUDA if available, else CPU):
``train_img_per_s=<x> sample_img_per_s=<x> swd_floor_ratio=<x> untrained_floor_ratio=<x>``.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ops.gan.loop import LoopConfig, fit  # noqa: E402
from ops.gan.metrics import swd_against  # noqa: E402
from ops.gan.networks import Generator, get_gan_config  # noqa: E402
from ops.gan.sampling import generate  # noqa: E402
from ops.gan.trainer import GanTrainer, TrainConfig  # noqa: E402
from ops.slides.crops import TileCropSampler, split_tiles  # noqa: E402
from ops.slides.demo_slides import DEMO_SLIDES, write_demo_slide  # noqa: E402
from ops.slides.extraction import extract_tiles  # noqa: E402
from ops.slides.reader import open_slide  # noqa: E402
from ops.slides.tiling import ParallelSpec, TilingParams, plan_grid  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
CACHE = Path(__file__).resolve().parent / "out"
PRETRAINED = ROOT / "resources" / "pretrained" / "gan_demo.pt"
DEMO_PRESET = ROOT / "pipelines" / "presets" / "demo.yaml"
BATCH = {"demo": 16, "256": 8}  # demo: the preset's batch; 256 px: what fits a CPU step in seconds
QUICK_BATCH = {"demo": 16, "256": 4}


def demo_tiles(slide_name: str) -> pd.DataFrame:
    """Tile table (with ``store``) of one demo slide, tiled once into bench/out/ and reused."""
    spec = next(s for s in DEMO_SLIDES if s.name == slide_name)
    slide = CACHE / f"{spec.name}.svs"
    if not slide.exists():
        print(f"writing {slide} ...", flush=True)
        write_demo_slide(spec, CACHE)
    out = CACHE / f"tiles_{spec.name}"
    if not (out / "tiles.parquet").exists():
        print(f"tiling {slide.name} into {out} ...", flush=True)
        params = TilingParams()
        with open_slide(slide, decoder=params.decoder) as reader:
            plan = plan_grid(reader, params)
        extract_tiles(str(slide), plan, params, ParallelSpec(workers=2), out, spec.name, f"sl-{spec.name}")
    return pd.read_parquet(out / "tiles.parquet").assign(store=str(out / "tiles.zarr"))


def spatial_halves(tiles: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Left half of the slide for training, right half held out (single-slide spatial split)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the "only one slide" warning is the point here
        split = split_tiles(tiles, spatial_holdout=0.5)
    return split.train, split.holdout


def _interleaved(steps: dict[str, object], seconds: float, min_steps: int, warmup: int) -> dict[str, float]:
    """Seconds per call of each ``steps[name]()``, calls interleaved round by round so that load changes on a
    shared machine hit every contender alike. ``warmup`` untimed rounds, then rounds until ``seconds`` per
    contender passed and each ran at least ``min_steps`` times."""
    for _ in range(warmup):
        for step in steps.values():
            step()
    spent = dict.fromkeys(steps, 0.0)
    count = 0
    while count < min_steps or min(spent.values()) < seconds:
        for name, step in steps.items():
            start = time.perf_counter()
            step()
            spent[name] += time.perf_counter() - start
        count += 1
    return {name: t / count for name, t in spent.items()}


def throughput(
    preset: str,
    device: torch.device,
    tiles: pd.DataFrame,
    seconds: float,
    batch: int,
    min_train_steps: int,
    warmup: int = 1,
) -> dict[str, float]:
    """Images/s of a full training step, a bare G+D step, and batched sampling, for one preset on one device."""
    cfg = get_gan_config(preset)
    sampler = TileCropSampler(tiles, cfg.resolution, seed=0)
    trainers = {
        "train": GanTrainer(cfg, TrainConfig(batch_size=batch), device),
        "bare": GanTrainer(
            cfg, TrainConfig(batch_size=batch, augment=False, r1_gamma=0.0, style_mixing_prob=0.0), device
        ),
    }
    # step 0 runs the lazy R1 (every r1_interval steps); with one warm-up step and min_train_steps = r1_interval
    # the timed window holds R1 in the share a long run has (quick mode times fewer steps and under-counts it)
    per_step = _interleaved(
        {name: (lambda tr=tr: tr.train_step(sampler.batch(batch, device))) for name, tr in trainers.items()},
        seconds,
        min_train_steps,
        warmup,
    )
    result = {name: batch / t for name, t in per_step.items()}
    seeds = iter(range(10**9))

    def sample() -> None:
        generate(trainers["train"].G_ema, np.array([next(seeds) for _ in range(batch)]), 1.0, device, batch=batch)

    result["sample"] = batch / _interleaved({"sample": sample}, seconds, 1, warmup)["sample"]
    return result


def quality(
    tiles_train: pd.DataFrame,
    tiles_held: pd.DataFrame,
    kimg: float,
    swd_images: int,
    batch: int,
    device: torch.device,
    pretrained: Path,
    seed: int = 0,
) -> dict[str, object]:
    """Fine-tune the demo config (from the shipped checkpoint if present) and compare SWD with the noise floor."""
    cfg = get_gan_config("demo")
    trainer = GanTrainer(cfg, TrainConfig(batch_size=batch, seed=seed), device)
    if pretrained.exists():
        trainer.load_checkpoint(pretrained)  # as gan_model does: weights, optimisers, ADA; counters restart
        trainer.step, trainer.images_seen = 0, 0
        start_from = f"fine-tuned from {pretrained}"
    else:
        start_from = f"NO PRETRAINED CHECKPOINT ({pretrained} missing): trained from random weights"
    ref_a = TileCropSampler(tiles_held, cfg.resolution, seed=12345).batch_uint8(swd_images)
    ref_b = TileCropSampler(tiles_held, cfg.resolution, seed=67890).batch_uint8(swd_images)
    eval_seeds = np.arange(swd_images) + 10_000_000
    torch.manual_seed(seed)
    untrained = Generator(cfg).to(device)
    floor = swd_against(ref_a, ref_b).per_level
    base = swd_against(ref_a, generate(untrained, eval_seeds, 1.0, device, batch=32)[2]).per_level
    with tempfile.TemporaryDirectory(dir=CACHE) as tmp:
        total = int(round(kimg * 1000))
        loop = LoopConfig(total_images=total, checkpoint_every=10**9, log_every=10**9, seed=seed)
        start = time.perf_counter()
        fit(trainer, tiles_train, loop, Path(tmp) / "checkpoint.pt")
        seconds = time.perf_counter() - start
    samples = generate(trainer.G_ema, eval_seeds, 1.0, device, batch=32)[2]
    swd = swd_against(ref_a, samples).per_level

    def ratio(values: dict[int, float]) -> float:
        return max(values[k] / max(floor[k], 1e-12) for k in floor)

    return {
        "start_from": start_from,
        "images": trainer.images_seen,
        "seconds": seconds,
        "floor": floor,
        "swd": swd,
        "untrained": base,
        "swd_floor_ratio": ratio(swd),
        "untrained_floor_ratio": ratio(base),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument(
        "--quick",
        action="store_true",
        help="tiny budget: 200 fine-tuning images, 1 torch thread, ~3 s per throughput measurement",
    )
    ap.add_argument(
        "--device",
        default="auto",
        choices=["auto", "cpu"],
        help="auto: CPU, plus CUDA when available (CUDA is then the headline device)",
    )
    ap.add_argument(
        "--kimg",
        type=float,
        default=None,
        help="fine-tuning budget in thousands of images (default: demo preset's, 0.2 with --quick)",
    )
    ap.add_argument("--seconds", type=float, default=None, help="time per throughput measurement (default 20, quick 3)")
    ap.add_argument("--pretrained", type=Path, default=PRETRAINED, help="demo checkpoint to fine-tune from")
    ap.add_argument("--slide", default="demo_03", choices=[s.name for s in DEMO_SLIDES])
    ap.add_argument(
        "--threads",
        type=int,
        default=None,
        help="torch threads (default: torch's; quick: 1, since on a shared 2-core machine two OpenMP "
        "threads under nice wait on each other)",
    )
    ap.add_argument("--presets", nargs="+", default=["demo", "256"], choices=sorted(BATCH))
    args = ap.parse_args()

    torch.set_num_threads(args.threads or (1 if args.quick else torch.get_num_threads()))
    gan_preset = yaml.safe_load(DEMO_PRESET.read_text())["ops"]["gan_model"]["config"]
    kimg = args.kimg if args.kimg is not None else (0.2 if args.quick else float(gan_preset["kimg"]))
    seconds = args.seconds if args.seconds is not None else (3.0 if args.quick else 20.0)
    devices = [torch.device("cpu")]
    if args.device == "auto" and torch.cuda.is_available():
        devices.append(torch.device("cuda"))
    head = devices[-1]

    tiles = demo_tiles(args.slide)
    train, held = spatial_halves(tiles)
    print(
        f"slide {args.slide}: {len(tiles)} tiles -> {len(train)} train (left) / {len(held)} held-out (right); "
        f"torch threads {torch.get_num_threads()}, load average {os.getloadavg()[0]:.1f}",
        flush=True,
    )

    rates: dict[tuple[str, str], dict[str, float]] = {}
    for device in devices:
        for preset in args.presets:
            batch = (QUICK_BATCH if args.quick else BATCH)[preset]
            r = throughput(preset, device, train, seconds, batch, min_train_steps=2 if args.quick else 16)
            rates[(preset, device.type)] = r
            print(
                f"{preset:>4} px-preset on {device.type:4}: batch {batch:2d}  train {r['train']:7.2f} img/s  "
                f"bare G+D {r['bare']:7.2f} img/s  sample {r['sample']:8.2f} img/s  "
                f"train_vs_bare={r['train'] / r['bare']:.2f}",
                flush=True,
            )
    if ("demo", "cpu") in rates and ("256", "cpu") in rates:
        d, b = rates[("demo", "cpu")], rates[("256", "cpu")]
        print(f"256 vs demo on cpu: train {b['train'] / d['train']:.3f}x, sample {b['sample'] / d['sample']:.3f}x")
    if len(devices) > 1:
        for preset in args.presets:
            c, g = rates[(preset, "cpu")], rates[(preset, "cuda")]
            print(
                f"{preset} cuda vs cpu: train {g['train'] / c['train']:.1f}x, sample {g['sample'] / c['sample']:.1f}x"
            )

    q = quality(
        train, held, kimg, int(gan_preset.get("swd_images", 64)), int(gan_preset["batch_size"]), head, args.pretrained
    )
    print(
        f"quality (demo config, {head.type}): {q['start_from']}; {q['images']} images in {q['seconds']:.1f} s "
        f"({q['images'] / q['seconds']:.1f} img/s incl. crop reading), kimg={kimg:g}"
    )
    levels = sorted(q["floor"], reverse=True)
    for name in ("floor", "swd", "untrained"):
        label = {"floor": "held-out A vs B", "swd": "samples vs A", "untrained": "untrained vs A"}[name]
        print(f"  SWD x1e3 {label:16}: " + "  ".join(f"{k}px {q[name][k]:7.2f}" for k in levels))
    h = rates[("demo", head.type)] if ("demo", head.type) in rates else next(iter(rates.values()))
    print(
        f"train_img_per_s={h['train']:.2f} sample_img_per_s={h['sample']:.2f} "
        f"swd_floor_ratio={q['swd_floor_ratio']:.3f} untrained_floor_ratio={q['untrained_floor_ratio']:.3f}"
    )


if __name__ == "__main__":
    main()
