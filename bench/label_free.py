"""Does the long label-free LDM pretraining help the LDM route under the equal label budget?

    HISTOFACTORY_HOME=<demo home> python bench/label_free.py [--budgets 4 16] [--seeds 0 1 2] [--quick]

The LDM budget route of ``bench/downstream.py`` (``ops.evaluation.budget_routes``) is built twice from a finished
demo's files, identical except for where its label-free pretraining starts: random weights (the baseline, what the
route did before) or the shipped ``resources/pretrained/ldm_demo_label_free.pt`` (``--label-free``), made by
``python -m ops.diffusion.label_free`` on unlabelled training-slide tiles only. Both then pretrain the same steps on
the same unlabelled crops and fine-tune the mask conditioning on each budget's N real training crops (same seeds), and
the stand-in annotator scores the pairs they make (label fidelity, the downstream bench's ``budget_fidelity_ldm``).
No label beyond the budget's N crops reaches either arm.

Last line: ``fidelity_random=<x> fidelity_label_free=<x> ratio=<x> seconds_random=<x> seconds_label_free=<x>``.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from downstream import route_files  # noqa: E402 - bench/ is on sys.path when a script runs

from ops.evaluation.budget_routes import QUICK_RETRAINING, RouteRetraining, build_budget_routes  # noqa: E402
from ops.evaluation.real_split import RealPairs, budget_indices  # noqa: E402
from ops.export.label_scores import fidelity  # noqa: E402
from ops.labelling.class_maps import get_class_map  # noqa: E402
from ops.labelling.demo_annotator import demo_labels  # noqa: E402
from resources.references import read_reference  # noqa: E402
from resources.storage import FactoryStorage  # noqa: E402


def arm_fidelity(
    home: Path, real: RealPairs, classes: list[str], retraining: RouteRetraining, budgets, seeds, pairs: int
) -> tuple[float, float, list[float]]:
    """Mean stand-in fidelity of the LDM route's pairs over (budget, seed), its seconds, and the per-point values."""
    started = time.perf_counter()
    route = build_budget_routes(["ldm"], classes, route_files(home), retraining, lambda s: print(s, flush=True))["ldm"]
    train_x, train_y, train_ids = real.part("train")
    scores = []
    for budget in budgets:
        for seed in seeds:
            pick = budget_indices(train_ids, budget, seed)
            x, y, _ = route.pairs(train_x[pick], train_y[pick], pairs, seed)
            scores.append(float(np.nanmean(fidelity(x, y, demo_labels, len(classes))[0])))
            print(f"  N={budget} seed={seed}: fidelity {scores[-1]:.3f}", flush=True)
    return float(np.mean(scores)), time.perf_counter() - started, scores


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--home", default=os.environ.get("HISTOFACTORY_HOME", "data"))
    parser.add_argument("--budgets", type=int, nargs="+", default=[4, 16])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--pairs", type=int, default=64, help="pairs each route makes per (budget, seed)")
    parser.add_argument("--quick", action="store_true", help="the downstream bench's --quick retraining lengths")
    parser.add_argument("--label-free", default=str(FactoryStorage.pretrained("ldm_demo_label_free.pt")))
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    home = Path(args.home)
    ref_file = home / "refs" / "real_annotations" / "_.json"
    if not ref_file.exists():
        raise SystemExit(f"{ref_file}: no real pairs; run `HISTOFACTORY_HOME={home} histofactory demo` first")
    if not Path(args.label_free).is_file():
        raise SystemExit(f"--label-free {args.label_free}: no such file (python -m ops.diffusion.label_free makes one)")
    ref = read_reference(ref_file)
    real = RealPairs.load(Path(ref.path))
    classes = list(get_class_map(ref.class_map or "demo").classes)
    base = QUICK_RETRAINING if args.quick else RouteRetraining()
    results = {}
    for name, start in (("random", None), ("label_free", args.label_free)):
        print(f"{name}: pretraining from {start or 'random weights'}", flush=True)
        retraining = dataclasses.replace(base, ldm_label_free=start)
        results[name] = arm_fidelity(home, real, classes, retraining, args.budgets, args.seeds, args.pairs)
    (f0, s0, _), (f1, s1, _) = results["random"], results["label_free"]
    print(
        f"budgets={args.budgets} seeds={args.seeds} pretrain_steps={base.ldm_pretrain_steps} "
        f"finetune_steps={base.ldm_finetune_steps} pairs={args.pairs}"
    )
    print(
        f"fidelity_random={f0:.3f} fidelity_label_free={f1:.3f} ratio={f1 / max(f0, 1e-9):.2f} "
        f"seconds_random={s0:.0f} seconds_label_free={s1:.0f}"
    )


if __name__ == "__main__":
    main()
