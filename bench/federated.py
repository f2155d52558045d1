"""The federated-GAN paper's downstream check at demo scale: can generated tiles stand in for real ones?

    python bench/federated.py [--quick] [--rounds 3] [--sites 3] [--backbone cnn]

Data: real IHC tissue (``skimage.data.immunohistochemistry``, the image the demo slides are made of) cut into 64-px
tiles; the left three quarters train, the right quarter is held out (disjoint tissue), each tile with its 8
dihedral copies. A tile's class is the demo rule: DAB-positive when the stand-in annotator's DAB region covers more
than half of it. Images are 32 px (tiles area-averaged by 2).

Arms, each scored on the held-out tiles by a tile classifier (accuracy, F1 of the positive class, recall per class),
all through ``ops.federated.downstream.classifier_check`` (the function the ``federated_tile_check`` asset runs):

- ``real``: the classifier trained on the real training tiles (the paper's real-only baseline);
- ``gen_central``: trained only on tiles from a conditional GAN trained centrally on all training tiles
  (``rounds x local_epochs`` epochs, the same image budget as the federation);
- ``gen_fed``: trained only on tiles from the FedAvg generator of a real loopback federation (SuperLink +
  ``--sites`` SuperNodes, IID split of the training tiles, each site in its own folder);
- ``gen_fed_noniid80``: the same with a non-IID split, 80 % of each site's tiles from its majority class.

Each generator's "generated + real" arm is printed too (``genreal_f1``), not in the last line.

Last line: ``acc_real=<x> f1_real=<x> f1_gen_central=<x> f1_gen_fed=<x> f1_gen_fed_noniid80=<x> rounds=<n>
sites=<n>``. Timings depend on whatever else the machine runs; the F1 values are the point.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from skimage import data

from ops.federated.downstream import CheckSettings, TileSet, classifier_check
from ops.federated.networks import CondGanConfig, CondGenerator
from ops.federated.runtime import MODEL_FILE, Federation, Site
from ops.federated.sites import dab_label, downsample_to, split_sites, write_prepared
from ops.federated.training import LocalTraining, build, load_global_generator, train_local

TILE, RES = 64, 32


def dihedral(tiles: np.ndarray) -> np.ndarray:
    return np.concatenate([np.rot90(t, k, axes=(1, 2)) for t in (tiles, tiles[:, :, ::-1]) for k in range(4)])


def dataset(threshold: float) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(train images, train labels, test images, test labels): spatially disjoint tiles of the IHC image."""
    img = data.immunohistochemistry()
    cut = img.shape[1] * 3 // 4
    out = []
    for x0, x1 in ((0, cut), (cut, img.shape[1])):
        tiles = np.stack(
            [
                img[y : y + TILE, x : x + TILE]
                for y in range(0, 512 - TILE + 1, TILE)
                for x in range(x0, x1 - TILE + 1, TILE)
            ]
        )
        labels = np.array([dab_label(t, 0.5, threshold, work_px=TILE) for t in tiles])
        tiles, labels = dihedral(tiles), np.tile(labels, 8)  # the DAB share does not change under rotation/flip
        out += [np.stack([downsample_to(t, RES) for t in tiles]), labels]
    return out[0], out[1], out[2], out[3]


def generated_f1(G: CondGenerator, train: TileSet, test: TileSet, args) -> dict[str, float]:
    """Scores of the generated-only (``gen_*``) and generated + real (``genreal_*``) classifiers."""
    settings = CheckSettings(args.backbone, args.clf_steps)
    found = classifier_check(G, train, test, 2, settings, arms=("generated", "generated_real"))
    return {**found["generated"].to_metadata("gen"), **found["generated_real"].to_metadata("genreal")}


def federate(train_x, train_y, majority: float | None, args, work: Path, cfg: CondGanConfig) -> CondGenerator:
    parts = split_sites(train_y, args.sites, majority=majority, seed=0)
    sites = []
    for k, idx in enumerate(parts):
        root = work / f"site_{k}"
        write_prepared(root, train_x[idx], train_y[idx])
        sites.append(Site(f"site{k}", root))
    run_config = {
        "gan-config": json.dumps(cfg.to_dict()),
        "num-rounds": args.rounds,
        "min-sites": args.sites,
        "local-epochs": float(args.local_epochs),
        "batch-size": 16,
        "round-timeout": 600.0,
    }
    with Federation(work / "runtime", sites) as fed:
        fed.run(run_config, work / "out", timeout=3600)
    return load_global_generator(work / "out" / MODEL_FILE)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="2 rounds, 4 local epochs, short classifiers")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--local-epochs", type=int, default=10)
    parser.add_argument("--sites", type=int, default=3)
    parser.add_argument("--backbone", default="cnn", help="classifier backbone: cnn or vit")
    parser.add_argument("--clf-steps", type=int, default=300)
    parser.add_argument("--threshold", type=float, default=0.5)
    args = parser.parse_args()
    if args.quick:
        args.rounds, args.local_epochs, args.clf_steps = 2, 4, 150
    torch.set_num_threads(1)
    train_x, train_y, test_x, test_y = dataset(args.threshold)
    train, test = TileSet(train_x, train_y), TileSet(test_x, test_y)
    print(
        f"train tiles {len(train_y)} (positive {train_y.mean():.2f}), test tiles {len(test_y)} "
        f"(positive {test_y.mean():.2f})"
    )

    t = time.perf_counter()
    real = classifier_check(None, train, test, 2, CheckSettings(args.backbone, args.clf_steps), arms=("real",))["real"]
    print(f"real only: {real} ({time.perf_counter() - t:.0f} s)")

    cfg = CondGanConfig(resolution=RES, lr=2e-3)
    t = time.perf_counter()
    G, D = build(cfg, 0)
    train_local(G, D, train_x, train_y, LocalTraining(args.rounds * args.local_epochs, 16, True, 0))
    central = generated_f1(G, train, test, args)
    print(f"generated (central GAN) only: {central} ({time.perf_counter() - t:.0f} s)")

    results = {}
    with tempfile.TemporaryDirectory(prefix="bench_federated_") as tmp:
        for name, majority in (("iid", None), ("noniid80", 0.8)):
            t = time.perf_counter()
            G = federate(train_x, train_y, majority, args, Path(tmp) / name, cfg)
            results[name] = generated_f1(G, train, test, args)
            print(f"generated (federated, {name}) only: {results[name]} ({time.perf_counter() - t:.0f} s)")
    print(
        f"acc_real={real.accuracy:.3f} f1_real={real.f1:.3f} f1_gen_central={central['gen_f1']:.3f} "
        f"f1_gen_fed={results['iid']['gen_f1']:.3f} f1_gen_fed_noniid80={results['noniid80']['gen_f1']:.3f} "
        f"rounds={args.rounds} sites={args.sites}"
    )


if __name__ == "__main__":
    main()
