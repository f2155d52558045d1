"""GenSeg under an equal label budget: label fidelity with and without the architecture search, seconds per pair.

    HISTOFACTORY_HOME=<demo home> python bench/genseg.py [--quick] [--budget 4] [--seeds 0] [--steps 100] [--all-arms]

Reads what a finished ``histofactory demo`` left: the leak-free real pairs of ``real_annotations`` (training crops of
annotated training tiles; validation crops of held-out tiles) and the kept tiles of the training slides (unlabelled
appearance). Per seed, ``ops.genseg.budget.budget_pairs`` - the function the learning curve calls per budget - trains
GenSeg from random weights on N training crops only (validation crops for the architecture's loss; test crops are
never read), once per arm, and paints ``--pairs`` pairs from augmented versions of the N masks:

* ``search``: the full multi-level optimisation (stages I-III, exact hypergradient);
* ``nosearch``: the ablation, stage III off (plain pix2pix + segmenter, A fixed and uniform);
* ``nounlabelled`` (``--all-arms``): stage III on, no unconditional discriminator on unlabelled tiles.

Downstream, per seed and arm: the learning curve's segmenter (``train_arm``, the demo preset's reduced curve: width 8,
100 real passes, at least 150 steps) trained on the N crops alone (``real``) and mixed with the arm's pairs
(``(1 − λ)·L_real + λ·L_syn``, ``--lam`` 0.5 = GenSeg's γ = 1), scored on the held-out test crops (mean Dice);
``gain_<arm>`` = mixed − real only, averaged over seeds (no CI: few seeds).

Fidelity (demo only): Dice of each generated mask against the DEMO STAND-IN annotator's labels of its image, mean over
classes present (``ops.export.label_scores.fidelity``; a real pair scores 1.0). The baseline in the same run: the N
real crops scored the same way (``fidelity_real``; below 1.0 where crops carry unannotated pixels). Seconds per pair =
training plus painting time of the arm / pairs. One torch thread (shared cores).

Last line: ``fidelity_search=<x> fidelity_nosearch=<x> [fidelity_nounlabelled=<x>] fidelity_real=<x> dice_real=<x>
gain_search=<x> gain_nosearch=<x> s_per_pair_search=<x> s_per_pair_nosearch=<x> train_s_search=<x>
train_s_nosearch=<x> budget=<n> steps=<n> pairs=<n> seeds=<n>``.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ops.evaluation.learning_curve import CurveConfig, score, train_arm  # noqa: E402
from ops.evaluation.real_split import RealPairs, budget_indices  # noqa: E402
from ops.export.label_scores import fidelity  # noqa: E402
from ops.genseg.budget import budget_config, paint_pairs, train_route  # noqa: E402
from ops.labelling.class_maps import get_class_map  # noqa: E402
from ops.labelling.demo_annotator import demo_annotate  # noqa: E402
from ops.slides.crops import TileCropSampler  # noqa: E402
from resources.references import read_reference  # noqa: E402


def _stand_in(images: np.ndarray) -> np.ndarray:
    return np.stack([demo_annotate(img) for img in images])


def _fidelity(images: np.ndarray, masks: np.ndarray, k: int) -> float:
    return float(np.nanmean(fidelity(images, masks, _stand_in, k)[0]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--home", default=os.environ.get("HISTOFACTORY_HOME", "data"), help="a finished demo's home")
    parser.add_argument("--quick", action="store_true", help="60 steps, 32 pairs, arms search and nosearch")
    parser.add_argument("--budget", type=int, default=4, help="labelled training crops N")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0], help="seeds (budget crops, weights, noise)")
    parser.add_argument("--steps", type=int, default=100, help="MLO steps per arm (budget preset 'quick': 100)")
    parser.add_argument("--all-arms", action="store_true", help="also the arm without the unlabelled discriminator")
    parser.add_argument("--pairs", type=int, default=64, help="generated pairs per arm and seed")
    parser.add_argument("--unlabelled", type=int, default=256, help="unlabelled tile crops for appearance")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument(
        "--lam", type=float, default=0.5, help="downstream mix weight of the generated pairs (0.5 = GenSeg's γ = 1)"
    )
    args = parser.parse_args()
    if args.quick:
        args.steps, args.pairs = 60, 32
    torch.set_num_threads(args.threads)
    home = Path(args.home)
    ref_file = home / "refs" / "real_annotations" / "_.json"
    if not ref_file.exists():
        raise SystemExit(f"{ref_file}: no real pairs; run `HISTOFACTORY_HOME={home} histofactory demo` first")
    ref = read_reference(ref_file)
    real = RealPairs.load(Path(ref.path))
    k = get_class_map(ref.class_map or "demo").n_classes
    train_x, train_y, train_ids = real.part("train")
    val_x, val_y, _ = real.part("val")
    tiles = pd.read_parquet(read_reference(home / "refs" / "training_tiles" / "_.json").path)
    unlabelled = TileCropSampler(tiles[tiles["split"] == "train"], train_x.shape[1], seed=99).batch_uint8(
        args.unlabelled
    )
    arms = {"search": {}, "nosearch": {"search": False}}
    if args.all_arms:
        arms["nounlabelled"] = {"unlabelled_disc": False}
    print(
        f"real crops {real.counts()}; N={args.budget}; steps {args.steps}; pairs {args.pairs}; seeds {args.seeds}",
        flush=True,
    )
    fid: dict[str, list[float]] = {arm: [] for arm in arms}
    secs: dict[str, list[float]] = {arm: [] for arm in arms}
    train_secs: dict[str, list[float]] = {arm: [] for arm in arms}
    real_fid, dice_real = [], []
    dice: dict[str, list[float]] = {arm: [] for arm in arms}
    curve = CurveConfig(base_channels=8, real_passes=100, min_steps=150)  # the demo preset's reduced curve
    test_x, test_y, _ = real.part("test")
    classes = list(get_class_map(ref.class_map or "demo").classes)
    for seed in args.seeds:
        pick = budget_indices(train_ids, args.budget, seed)
        x, y = train_x[pick], train_y[pick]
        real_fid.append(_fidelity(x, y, k))
        dice_real.append(
            score(train_arm("real", (x, y), None, curve, k, seed).model, test_x, test_y, classes)["mean_dice"]
        )
        for arm, overrides in arms.items():
            cfg = dataclasses.replace(budget_config("quick", **overrides), steps=args.steps, device="cpu")
            start = time.perf_counter()
            trainer = train_route(x, y, val_x, val_y, unlabelled, k, seed, cfg)
            trained = time.perf_counter()
            images, masks = paint_pairs(trainer, y, args.pairs, seed)
            done = time.perf_counter()
            fid[arm].append(_fidelity(images, masks, k))
            secs[arm].append((done - start) / args.pairs)
            train_secs[arm].append(trained - start)
            mixed = train_arm("mix", (x, y), (images, masks), curve, k, seed, args.lam)
            dice[arm].append(score(mixed.model, test_x, test_y, classes)["mean_dice"])
            arch = {c: max(w, key=w.get) for c, w in trainer.generator.arch_weights().items()}
            print(
                f"seed {seed} {arm}: fidelity {fid[arm][-1]:.3f}, test Dice real+pairs {dice[arm][-1]:.3f} "
                f"(real only {dice_real[-1]:.3f}), train {trained - start:.0f} s, "
                f"paint {done - trained:.1f} s, architecture {arch}",
                flush=True,
            )
    line = {f"fidelity_{arm}": f"{np.mean(v):.3f}" for arm, v in fid.items()}
    line["fidelity_real"] = f"{np.mean(real_fid):.3f}"
    line["dice_real"] = f"{np.mean(dice_real):.3f}"
    line |= {f"gain_{arm}": f"{np.mean(np.subtract(v, dice_real)):+.3f}" for arm, v in dice.items()}
    line |= {f"s_per_pair_{arm}": f"{np.mean(v):.2f}" for arm, v in secs.items() if arm != "nounlabelled"}
    line |= {f"train_s_{arm}": f"{np.mean(v):.0f}" for arm, v in train_secs.items() if arm != "nounlabelled"}
    line |= {"budget": args.budget, "steps": args.steps, "pairs": args.pairs, "seeds": len(args.seeds)}
    print(" ".join(f"{key}={value}" for key, value in line.items()))


if __name__ == "__main__":
    main()
