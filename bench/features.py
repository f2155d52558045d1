"""Pixel features: HDGAN's upsampled memmaps vs our native-resolution zarr store, and generator features vs colour.

    python bench/features.py [--quick] [--resolutions 512 1024] [--images 4 8 16] [--window PX]

Part 1, storage and training cost (random-weight generator: random weights change neither bytes nor speed). A
``GanConfig(resolution=R, channel_base=8*R, channel_max=128)`` gives the last five synthesis blocks HDGAN's halving
widths 128/64/32/16/8 (HDGAN's blocks 256...4096 px, scaled to R/16...R): 248 features per pixel. For every
R in ``--resolutions`` and N in ``--images`` annotated images (random labels with HDGAN's class shares):

- (a) HDGAN layout: every block bilinearly upsampled to R x R, one fp16 ``.npy`` memmap per image
  (``write_upsampled_features``), sampled with ``UpsampledFeatureSampler``. Written only when twice its size is
  free on disk; otherwise its bytes are computed (``bytes_for_full_maps``) and its training is skipped;
- (b) ours: native-resolution fp16 zarr store (``FeatureStoreWriter``), sampled with ``FeatureSampler``, which
  upsamples only the sampled pixels.

Disk bytes are measured (and compared with the upsampled *float32* layout, 2x the fp16 memmap). Classifier training
(the pipeline's ensemble: 10 MLPs 248->128->32->5, batches of 4096 pixels from ``BatchStream``) runs in a fresh
subprocess per (layout, R, N), which reports training pixels/s (median over batches, robust to load spikes) and
its peak RSS (``ru_maxrss``), so runs do not pollute each other. Baseline in the same run: DatasetGAN's in-RAM
layout (all upsampled features of the images in one float32 array) at the first resolution with 4 images, where it
fits in RAM.

Part 2, the demo benchmark: the demo 64-px generator (``resources/pretrained/gan_demo.pt``, or ``--generator``;
random weights when neither exists, and the output says so) generates images, the demo annotator labels them, and
the demo preset's classifier is trained on some and scored (mean Dice) on held-out generated images, once on the
generator's features (native store) and once on a 7x7 RGB neighbourhood (147 features). Their ratio
``features_vs_rgb`` asks whether the generator's representation beats local colour. The features are compared as the
last K synthesis blocks for every K (``--blocks``; HDGAN used the last 5, which at 64 px is every block); the K with
the best Dice on the *validation* images is chosen, and only its test Dice is reported as ``mean_dice_best``.

Targets: disk_ratio >= 20, rss_growth < 0.10 (ours, from 4 to 16 images), throughput_ratio >= 0.8 (ours / in-RAM).
Last line: ``disk_ratio=<min over R, N> rss_growth=<max over R> throughput_ratio=<x> mean_dice=<last 5 blocks>
features_vs_rgb=<x> blocks_best=<K> mean_dice_best=<x> best_vs_rgb=<x>``. Timings are wall-clock on a shared
machine: compare ratios within one run. ``--quick`` uses one torch thread (children too): on a shared 2-core machine
two OpenMP threads under ``nice`` wait on each other.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import child_process  # noqa: E402 - bench/ is on sys.path when a script runs

from ops.evaluation.metrics import confusion_matrix, mean_dice  # noqa: E402
from ops.gan.networks import GanConfig, Generator, get_gan_config  # noqa: E402
from ops.gan.sampling import generate  # noqa: E402
from ops.gan.trainer import load_generator  # noqa: E402
from ops.labelling.demo_annotator import DEMO_CLASS_MAP, demo_annotate  # noqa: E402
from ops.labelling.feature_sampler import BatchStream, FeatureSampler, UpsampledFeatureSampler  # noqa: E402
from ops.labelling.feature_store import (  # noqa: E402
    FeatureStoreWriter,
    bytes_for_full_maps,
    write_upsampled_features,
)
from ops.labelling.pixel_classifier import EnsembleConfig, MLPConfig, PixelEnsemble, TrainConfig  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
CACHE = Path(__file__).resolve().parent / "out"
PRETRAINED = ROOT / "resources" / "pretrained" / "gan_demo.pt"
DEMO_PRESET = ROOT / "pipelines" / "presets" / "demo.yaml"
# HDGAN's pixel shares: whitespace, cortical tubulointerstitium, glomerulus, arteriole, artery
HDGAN_SHARES = np.array([0.387, 0.532, 0.0435, 0.0036, 0.0334])
BLOCKS = 5
GiB = 2**30


# ----------------------------------------------------------------------------------------------------------------
# In-RAM sources (DatasetGAN's layout, and the RGB-neighbourhood baseline).


class InRamSource:
    """PixelSource over a float32 ``[N, H, W, F]`` array held in RAM."""

    def __init__(self, features: np.ndarray) -> None:
        self.features = features
        self.n_images, h, w, self.n_features = features.shape
        self.output_shape = (h, w)

    def sample(self, image_index: np.ndarray | int, ys: np.ndarray, xs: np.ndarray) -> np.ndarray:
        ys, xs = np.asarray(ys, np.int64).ravel(), np.asarray(xs, np.int64).ravel()
        image_index = np.broadcast_to(np.asarray(image_index, np.int64), ys.shape).ravel()
        return self.features[image_index, ys, xs]


def rgb_neighbourhoods(images: np.ndarray, size: int = 7) -> np.ndarray:
    """uint8 ``[N, H, W, 3]`` -> float32 ``[N, H, W, size*size*3]`` (reflect-padded neighbourhood of each pixel)."""
    r = size // 2
    padded = np.pad(images.astype(np.float32) / 127.5 - 1, ((0, 0), (r, r), (r, r), (0, 0)), mode="reflect")
    h, w = images.shape[1:3]
    shifts = [padded[:, dy : dy + h, dx : dx + w] for dy in range(size) for dx in range(size)]
    return np.concatenate(shifts, axis=-1)


# ----------------------------------------------------------------------------------------------------------------
# Child process: train the ensemble for a fixed number of batches, report pixels/s and peak RSS.


def _rss_now() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def child(spec: dict) -> None:
    """Entry point of ``--child``: one training run on one layout; prints one JSON line."""
    torch.set_num_threads(spec["threads"])
    rss_start = _rss_now()
    labels_all = np.load(spec["labels"], mmap_mode="r")
    n = spec["n_images"]
    if spec["layout"] == "native":
        source = FeatureSampler(spec["store"])
    elif spec["layout"] == "upsampled":
        source = UpsampledFeatureSampler(spec["memmaps"][:n])
    else:  # in-RAM: DatasetGAN keeps every image's upsampled features in memory
        native = FeatureSampler(spec["store"])
        h, w = native.output_shape
        feats = np.empty((n, h, w, native.n_features), np.float32)
        for i in range(n):
            for y, band in native.iter_row_bands(i, band_rows=64):
                feats[i, y : y + band.shape[0]] = band
        source = InRamSource(feats)
    labels = [labels_all[i] for i in range(n)]
    # one batch per "epoch", so the progress callback times every batch; the median batch rate shrugs off load
    # spikes from other processes on a shared machine
    stream = BatchStream(
        source,
        labels,
        None,
        spec["batch_size"],
        1,
        n_classes=len(HDGAN_SHARES),
        class_balance=0.5,
        seed=0,
        window=spec["window"],
    )
    ensemble = PixelEnsemble(EnsembleConfig(MLPConfig(source.n_features, len(HDGAN_SHARES)), spec["members"]))
    marks: list[float] = []
    ensemble.fit(
        stream,
        None,
        TrainConfig(max_epochs=spec["batches"], patience=0, norm_pixels=spec["batch_size"]),
        lambda event: marks.append(time.perf_counter()) if event.stage in ("normalisation", "epoch") else None,
    )
    seconds = np.diff(marks)
    print(
        json.dumps(
            {
                "pixels_per_s": spec["batch_size"] / float(np.median(seconds)),
                "seconds": float(seconds.sum()),
                "rss_start": rss_start,
                "peak_rss": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
            }
        )
    )


def run_child(spec: dict) -> dict:
    return child_process.run_child(__file__, spec, spec["layout"])


# ----------------------------------------------------------------------------------------------------------------
# Part 1: layouts.


def layout_config(resolution: int) -> GanConfig:
    """Last five blocks R/16 ... R with 128/64/32/16/8 channels (HDGAN's widths, resolutions scaled)."""
    return GanConfig(resolution=resolution, channel_base=8 * resolution, channel_max=128)


def dir_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) if path.is_dir() else path.stat().st_size


def layouts(resolution: int, counts: list[int], work: Path, args: argparse.Namespace) -> list[dict]:
    """Write both layouts for each N (first N images of one generated set), train on each in a subprocess."""
    cfg = layout_config(resolution)
    torch.manual_seed(0)
    G = Generator(cfg).eval().requires_grad_(False)
    n_max = max(counts)
    chans = G.block_channels[-BLOCKS:]
    res = G.block_resolutions[-BLOCKS:]
    n_features = sum(chans)
    rng = np.random.default_rng(0)
    coarse = rng.choice(
        len(HDGAN_SHARES), p=HDGAN_SHARES / HDGAN_SHARES.sum(), size=(n_max, resolution // 16, resolution // 16)
    )
    labels = np.repeat(np.repeat(coarse, 16, axis=1), 16, axis=2).astype(np.uint8)  # 16-px label blobs
    labels_path = work / f"labels_{resolution}.npy"
    np.save(labels_path, labels)
    full_fp16 = bytes_for_full_maps((resolution, resolution), n_features)
    write_up = n_max * full_fp16 * 2 <= shutil.disk_usage(work).free
    print(
        f"{resolution}px: blocks {res} x channels {chans} = {n_features} features/pixel; upsampled fp16 memmaps "
        f"{n_max} x {full_fp16 / GiB:.2f} GiB: {'written' if write_up else 'NOT written (disk), bytes computed'}",
        flush=True,
    )
    stores = {
        n: FeatureStoreWriter(
            work / f"native_{resolution}_{n}.zarr", n, [(c, r, r) for c, r in zip(chans, res, strict=True)]
        )
        for n in counts
    }
    memmaps = []
    start = time.perf_counter()
    for i in range(n_max):
        with torch.no_grad():
            z = torch.randn(1, cfg.z_dim, generator=torch.Generator().manual_seed(i))
            _, feats = G(z, noise_mode="const", return_features=True)
        blocks = [f[0].numpy() for f in feats[-BLOCKS:]]
        for n, writer in stores.items():
            if i < n:
                writer.write(i, blocks)
        if write_up:
            memmaps.append(str(write_upsampled_features(work / f"up_{resolution}_{i:03d}.npy", blocks)))
    for writer in stores.values():
        writer.close()
    print(f"  generated and wrote {n_max} images in {time.perf_counter() - start:.1f} s", flush=True)
    rows = []
    base = {
        "labels": str(labels_path),
        "batch_size": args.batch_size,
        "batches": args.batches,
        "members": args.members,
        "window": args.window,
        "threads": torch.get_num_threads(),
    }
    for n in counts:
        store = work / f"native_{resolution}_{n}.zarr"
        row = {
            "resolution": resolution,
            "n": n,
            "native_bytes": dir_bytes(store),
            "up_fp16_bytes": sum(Path(p).stat().st_size for p in memmaps[:n]) if write_up else n * full_fp16,
            "up_measured": write_up,
            "up_fp32_bytes": 2 * n * full_fp16,
        }
        row["native"] = run_child({**base, "layout": "native", "store": str(store), "n_images": n})
        if write_up:
            row["upsampled"] = run_child({**base, "layout": "upsampled", "memmaps": memmaps, "n_images": n})
        if n == 4 and resolution == args.resolutions[0]:
            row["inram"] = run_child({**base, "layout": "inram", "store": str(store), "n_images": n})
        rows.append(row)
        _print_row(row)
    return rows


def _print_row(row: dict) -> None:
    mib = 2**20
    ratio = row["up_fp32_bytes"] / row["native_bytes"]
    head = f"  R={row['resolution']:4d} N={row['n']:2d}"
    print(
        f"{head} disk: ours {row['native_bytes'] / mib:8.1f} MiB | upsampled fp16 "
        f"{row['up_fp16_bytes'] / mib:9.1f} MiB{'' if row['up_measured'] else ' (computed)'} | fp32 "
        f"{row['up_fp32_bytes'] / mib:9.1f} MiB | fp32/ours {ratio:6.1f}x"
    )
    for key, name in (("native", "ours (zarr, native)"), ("upsampled", "HDGAN (memmap)"), ("inram", "in-RAM")):
        if key in row:
            r = row[key]
            print(
                f"{head} train {name:20}: {r['pixels_per_s']:9.0f} px/s  peak RSS {r['peak_rss'] / mib:7.0f} MiB "
                f"(process start {r['rss_start'] / mib:4.0f} MiB)",
                flush=True,
            )


# ----------------------------------------------------------------------------------------------------------------
# Part 2: demo benchmark Dice, generator features vs RGB neighbourhood.


def _train_eval(source, labels: np.ndarray, split: dict[str, np.ndarray], cls: dict, predict) -> tuple[float, float]:
    """Train the preset's ensemble on ``split['train']``, early-stop on ``split['val']``; mean Dice on val and test.

    The validation Dice is what chooses between feature sets; the test Dice is only reported.
    """
    k = DEMO_CLASS_MAP.n_classes

    def stream(name: str, fixed: bool, batches: int) -> BatchStream:
        return BatchStream(
            source,
            [labels[i] for i in split[name]],
            split[name],
            cls["batch_size"],
            batches,
            k,
            cls["class_balance"],
            seed=0,
            fixed=fixed,
        )

    ensemble = PixelEnsemble(
        EnsembleConfig(MLPConfig(source.n_features, k, tuple(cls["hidden"]), cls["dropout"]), cls["members"])
    )
    train_cfg = TrainConfig(optimizer=cls["optimizer"], max_epochs=cls["max_epochs"], patience=cls["patience"])
    ensemble.fit(
        stream("train", False, cls["batches_per_epoch"]),
        stream("val", True, max(2, cls["batches_per_epoch"] // 4)),
        train_cfg,
    )
    dice = []
    for name in ("val", "test"):
        cm = np.zeros((k, k), np.int64)
        for i in split[name]:
            probs = predict(ensemble, int(i))
            cm += confusion_matrix(labels[i], probs.mean(axis=0).argmax(axis=-1).reshape(labels[i].shape), k)
        dice.append(mean_dice(cm))
    return dice[0], dice[1]


def demo_dice(work: Path, args: argparse.Namespace) -> dict:
    preset = yaml.safe_load(DEMO_PRESET.read_text())["ops"]
    ann, cls = preset["annotations"]["config"], dict(preset["pixel_classifier"]["config"])
    cls.setdefault("class_balance", 0.5)  # pixel_classifier's defaults for what the preset leaves out
    cls.setdefault("dropout", 0.3)
    psi = float(preset["generated_samples"]["config"]["psi"])
    n_train, n_val, n_test = ann["n_train"], ann["n_val"], ann["n_test"]
    if args.quick:
        n_train, n_val, n_test = 8, 2, 8
        cls.update(members=3, batches_per_epoch=10, max_epochs=3, batch_size=2048)
    path = Path(args.generator) if args.generator else PRETRAINED
    if path.exists():
        G = load_generator(path)
        origin = f"generator {path}"
    else:
        torch.manual_seed(0)
        G = Generator(get_gan_config("demo")).eval().requires_grad_(False)
        origin = f"NO TRAINED GENERATOR ({path} missing): random weights; Dice says nothing about trained features"
    n = n_train + n_val + n_test
    _, ws, images = generate(G, np.arange(n, dtype=np.int64), psi)
    labels = np.stack([demo_annotate(img) for img in images])
    blocks = sorted({min(k, len(G.block_channels)) for k in (args.blocks or range(1, len(G.block_channels) + 1))})
    with torch.no_grad():
        feats = [
            [
                f[0].numpy()
                for f in G.synthesis(torch.from_numpy(ws[i : i + 1]), noise_mode="const", return_features=True)[1]
            ]
            for i in range(n)
        ]
    stores = {}
    for k in blocks:  # one native store per feature set: the last k synthesis blocks
        stores[k] = work / f"demo_native_last{k}.zarr"
        shapes = [(c, r, r) for c, r in zip(G.block_channels[-k:], G.block_resolutions[-k:], strict=True)]
        with FeatureStoreWriter(stores[k], n, shapes) as writer:
            for i in range(n):
                writer.write(i, feats[i][-k:])
    order = np.random.default_rng(0).permutation(n)
    split = {"train": order[:n_train], "val": order[n_train : n_train + n_val], "test": order[n_train + n_val :]}
    shares = np.bincount(labels[split["test"]].ravel(), minlength=DEMO_CLASS_MAP.n_classes) / labels[split["test"]].size
    print(
        f"demo benchmark: {origin}; {n_train}/{n_val}/{n_test} train/val/test generated images at "
        f"{images.shape[1]} px, psi {psi}; test class shares "
        + " ".join(f"{c}={s:.2f}" for c, s in zip(DEMO_CLASS_MAP.classes, shares, strict=True)),
        flush=True,
    )
    print(
        f"  classifier: {cls['members']} members, hidden {cls['hidden']}, batch {cls['batch_size']}, "
        f"{cls['batches_per_epoch']} batches/epoch, <= {cls['max_epochs']} epochs",
        flush=True,
    )

    rgb = InRamSource(rgb_neighbourhoods(images))

    def predict_rgb(ensemble: PixelEnsemble, i: int) -> np.ndarray:
        return ensemble.predict_proba(rgb.features[i].reshape(-1, rgb.n_features))

    start = time.perf_counter()
    rgb_val, rgb_test = _train_eval(rgb, labels, split, cls, predict_rgb)
    print(
        f"  7x7 RGB neighbourhood ({rgb.n_features}/px): val Dice {rgb_val:.3f}, test Dice {rgb_test:.3f} "
        f"({time.perf_counter() - start:.0f} s)",
        flush=True,
    )
    scores = {}
    for k in blocks:
        sampler = FeatureSampler(stores[k])

        def predict_features(ensemble: PixelEnsemble, i: int, sampler: FeatureSampler = sampler) -> np.ndarray:
            rows = sampler.read_rows(i, 0, sampler.output_shape[0])
            return ensemble.predict_proba(rows.reshape(-1, sampler.n_features))

        start = time.perf_counter()
        scores[k] = _train_eval(sampler, labels, split, cls, predict_features)
        print(
            f"  generator features, last {k} block(s) ({sampler.n_features}/px): val Dice {scores[k][0]:.3f}, "
            f"test Dice {scores[k][1]:.3f} ({time.perf_counter() - start:.0f} s)",
            flush=True,
        )
    best = max(blocks, key=lambda k: scores[k][0])  # chosen on validation images, never on test
    hdgan = min(BLOCKS, max(blocks))
    print(f"  chosen on validation: last {best} block(s); HDGAN's last {BLOCKS} (here {hdgan})", flush=True)
    return {
        "features": scores[hdgan][1] if hdgan in scores else float("nan"),
        "best": scores[best][1],
        "best_blocks": best,
        "rgb": rgb_test,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument(
        "--quick",
        action="store_true",
        help="256 px, N in (2, 4), 5 training batches, small Dice run (3 members, 3 epochs), 1 thread",
    )
    ap.add_argument("--resolutions", type=int, nargs="+", default=None, help="default 512 1024 (quick: 256)")
    ap.add_argument("--images", type=int, nargs="+", default=None, help="default 4 8 16 (quick: 2 4)")
    ap.add_argument("--batches", type=int, default=None, help="timed training batches per run (default 20, quick 5)")
    ap.add_argument("--batch-size", type=int, default=4096, help="pixels per batch (the demo preset's)")
    ap.add_argument("--members", type=int, default=10, help="ensemble members (the demo preset's)")
    ap.add_argument(
        "--window",
        type=int,
        default=None,
        help="BatchStream window (px); default none = uniform sampling, as pixel_classifier does",
    )
    ap.add_argument("--generator", default=None, help="demo generator checkpoint (default: the shipped one)")
    ap.add_argument(
        "--threads",
        type=int,
        default=None,
        help="torch threads (default: torch's; quick: 1, since on a shared 2-core machine two OpenMP "
        "threads under nice wait on each other)",
    )
    ap.add_argument(
        "--blocks",
        type=int,
        nargs="+",
        default=None,
        help="Part 2: feature sets to compare, as the last K synthesis blocks (default: every K; chosen on validation)",
    )
    ap.add_argument("--skip-dice", action="store_true")
    ap.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        child(json.loads(args.child))
        return
    torch.set_num_threads(args.threads or (1 if args.quick else torch.get_num_threads()))  # children inherit it
    args.resolutions = args.resolutions or ([256] if args.quick else [512, 1024])
    args.images = sorted(args.images or ([2, 4] if args.quick else [4, 8, 16]))
    args.batches = args.batches or (5 if args.quick else 20)
    if 4 not in args.images:
        raise SystemExit("--images must include 4 (the in-RAM baseline and the RSS reference use 4 images)")
    print(
        f"torch threads {torch.get_num_threads()}, load average {os.getloadavg()[0]:.1f}; training runs: "
        f"{args.members} members, {args.batches} batches x {args.batch_size} px, window {args.window}",
        flush=True,
    )
    CACHE.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=CACHE, prefix="features_") as tmp:
        work = Path(tmp)
        rows = [row for r in args.resolutions for row in layouts(r, args.images, work, args)]
        skipped = {"features": float("nan"), "best": float("nan"), "best_blocks": 0, "rgb": float("nan")}
        dice = skipped if args.skip_dice else demo_dice(work, args)
    disk_ratio = min(r["up_fp32_bytes"] / r["native_bytes"] for r in rows)
    growth = []
    for res in args.resolutions:
        peak = {r["n"]: r["native"]["peak_rss"] for r in rows if r["resolution"] == res}
        growth.append(peak[max(peak)] / peak[4] - 1 if max(peak) != 4 else peak[4] / peak[min(peak)] - 1)
        if "upsampled" in next(r for r in rows if r["resolution"] == res):
            up = {r["n"]: r["upsampled"]["peak_rss"] for r in rows if r["resolution"] == res}
            print(
                f"R={res}: HDGAN memmap peak RSS growth {min(up)}->{max(up)} images: "
                f"{up[max(up)] / up[min(up)] - 1:+.1%}; ours {min(peak)}->{max(peak)}: "
                f"{peak[max(peak)] / peak[min(peak)] - 1:+.1%}"
            )
    ref = next(r for r in rows if r["resolution"] == args.resolutions[0] and r["n"] == 4)
    throughput_ratio = ref["native"]["pixels_per_s"] / ref["inram"]["pixels_per_s"]
    extra = ""
    if "upsampled" in ref:
        extra = f", HDGAN memmap / in-RAM {ref['upsampled']['pixels_per_s'] / ref['inram']['pixels_per_s']:.2f}"
    print(
        f"R={args.resolutions[0]} N=4: ours / in-RAM training throughput {throughput_ratio:.2f}{extra}; in-RAM "
        f"peak RSS {ref['inram']['peak_rss'] / 2**20:.0f} MiB vs ours {ref['native']['peak_rss'] / 2**20:.0f} MiB"
    )
    print(
        f"disk_ratio={disk_ratio:.1f} rss_growth={max(growth):.3f} throughput_ratio={throughput_ratio:.2f} "
        f"mean_dice={dice['features']:.3f} features_vs_rgb={dice['features'] / dice['rgb']:.2f} "
        f"blocks_best={dice['best_blocks']} mean_dice_best={dice['best']:.3f} "
        f"best_vs_rgb={dice['best'] / dice['rgb']:.2f}"
    )


if __name__ == "__main__":
    main()
