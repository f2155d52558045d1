"""The downstream benchmark: label fidelity per route and the low-label learning curve, on a finished demo's data.

    HISTOFACTORY_HOME=<demo home> python bench/downstream.py [--quick] [--home DIR] [--export VERSION] [--workers 2]

Runs ``ops.evaluation.downstream.run_downstream`` - the function the ``downstream_eval`` asset runs - on the data a
``histofactory demo`` left under the home: the leak-free real pairs of ``real_annotations`` (training crops of the
annotated training tiles, validation and test crops of disjoint held-out tiles) and the synthetic pairs of the newest
export (or ``--export``). Label scores (fidelity against the demo stand-in, agreement with the label judge) are read
from the export's ``label_scores.json``, where the export wrote them.

Full: budgets N in {4, 8, 16, 32, 64, all}, 5 seeds, every arm (real, real_aug, syn_only, mix with lambda in
{0.1, 0.3, 0.5} chosen on validation, syn_then_real) per route. ``--quick``: N in {4, 16}, 3 seeds, the same arms
with mix at lambda 0.5 only (GenSeg's gamma = 1 weighting), shorter route retraining (GenSeg: its `quick` preset).
``--budgets``, ``--seeds``, ``--lambdas``, ``--pretrain-shares`` and ``--arms`` override either preset (e.g. quick's
retraining with 5 seeds and the full lambda sweep; or only the arms that add a route's pairs to the real crops at
the largest budget, where each arm costs 1200 U-Net steps).

Equal label budget (``ops.evaluation.budget_routes``): at every budget and seed each route's labelled part is
retrained on that budget's labels only. ``stylegan2``: the demo's generator (it saw no label) with a new pixel
classifier on N annotated generated images. ``ldm``: the demo's autoencoder (images only) and a denoiser of the demo's
architecture pretrained on unlabelled training-slide crops through the null condition (continuing the shipped long
label-free run ``resources/pretrained/ldm_demo_label_free.pt``, or from random weights with ``--ldm-label-free
none``), then fine-tuned on the N crops. ``genseg``: trained from random weights on the N crops
(``ops.genseg.budget``; stage A learns from the validation crops). ``--export-pairs`` uses the exported pairs instead
(their labels come from every annotated tile: an upper bound, not the protocol).

Last line: ``fidelity_<route>=<x> [fidelity_all_pixels_<route>=<x>] judge_<route>=<x> budget_fidelity_<route>=<x> ...
gain_at_4=<x> ci_low_at_4=<x> best_arm_at_4=<name> gain_at_max=<x>``. fidelity and judge score the export's pairs
(fidelity_all_pixels: unlabelled mask pixels counted as misses); budget_fidelity is the stand-in's Dice on the
labelled pixels of the pairs the routes made under the equal label budget; gain = best synthetic arm - real only,
mean test Dice, paired over seeds, with a 95 % bootstrap CI.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ops.evaluation.budget_routes import (  # noqa: E402
    QUICK_RETRAINING,
    RouteFiles,
    RouteRetraining,
    build_budget_routes,
)
from ops.evaluation.downstream import run_downstream  # noqa: E402
from ops.evaluation.learning_curve import ARMS, CurveConfig  # noqa: E402
from ops.evaluation.real_split import RealPairs  # noqa: E402
from ops.export.dataset import mask_routes  # noqa: E402
from ops.labelling.class_maps import get_class_map  # noqa: E402
from ops.labelling.demo_annotator import demo_labels  # noqa: E402
from resources.references import read_reference  # noqa: E402
from resources.storage import FactoryStorage  # noqa: E402

# The mix arm's λ sweep is 60 % of the U-Net time; quick trains it at GenSeg's equal weighting only (γ = 1, i.e.
# λ = 0.5) to stay under 30 minutes on 2 cores. Fixed a priori, not chosen on results; the full bench sweeps.
QUICK = {"budgets": (4, 16), "seeds": (0, 1, 2), "lambdas": (0.5,)}


def home_ref(home: Path, asset: str):
    """The reference a finished demo left for ``asset`` (exits with the fix when the demo has not run)."""
    path = home / "refs" / asset / "_.json"
    if not path.exists():
        raise SystemExit(f"{path}: missing; run `HISTOFACTORY_HOME={home} histofactory demo` first")
    return read_reference(path)


def _latest_export(home: Path, version: str | None) -> Path:
    root = home / "export"
    if version:
        return root / version
    exports = sorted((p for p in root.glob("*") if (p / "manifest.parquet").exists()), key=lambda p: p.stat().st_mtime)
    if not exports:
        raise SystemExit(f"no export under {root}: run `HISTOFACTORY_HOME={home} histofactory demo` first")
    return exports[-1]


def route_files(home: Path) -> RouteFiles:
    """What the demo left for the routes to retrain from."""
    features = home_ref(home, "generated_features")
    return RouteFiles(
        gan_checkpoint=home_ref(home, "gan_model").path,
        features=features.path,
        feature_blocks=features.blocks,
        annotations=home_ref(home, "annotations").path,
        autoencoder=home_ref(home, "autoencoder").path,
        ldm_checkpoint=home_ref(home, "ldm_model").path,
        training_tiles=home_ref(home, "training_tiles").path,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="N in {4, 16}, 3 seeds, mix at λ 0.5")
    parser.add_argument("--budgets", type=int, nargs="+", default=None, help="override the budgets N (0 = all)")
    parser.add_argument("--seeds", type=int, nargs="+", default=None, help="override the seeds")
    parser.add_argument(
        "--lambdas", type=float, nargs="+", default=None, help="override the mix arm's λ set (chosen on validation)"
    )
    parser.add_argument(
        "--pretrain-shares",
        type=float,
        nargs="+",
        default=None,
        help="override syn_then_real's pre-training lengths, as shares of its fine-tune steps (chosen on validation)",
    )
    parser.add_argument(
        "--arms",
        nargs="+",
        choices=ARMS,
        default=None,
        help="override the arms (real is required: every gain is against it)",
    )
    parser.add_argument(
        "--gan-psi",
        type=float,
        default=RouteRetraining().gan_psi,
        help="truncation psi of the GAN route's samples (default: the export's, 0.7)",
    )
    parser.add_argument(
        "--gan-match-pool",
        type=int,
        default=RouteRetraining().gan_match_pool,
        help="GAN route: 0 keeps its first samples; k >= 1 keeps colour matches to training crops from k times more",
    )
    parser.add_argument(
        "--gan-ignore-uncertain",
        type=float,
        default=RouteRetraining().gan_ignore_uncertain,
        help="GAN route: share of each mask's most uncertain pixels (ensemble JS divergence) left unlabelled",
    )
    parser.add_argument(
        "--ldm-guidance",
        type=float,
        default=RouteRetraining().ldm_guidance,
        help="guidance of the LDM route's samples (default: the export's, 4)",
    )
    parser.add_argument(
        "--ldm-label-free",
        default=str(FactoryStorage.pretrained("ldm_demo_label_free.pt")),
        help="label-free denoiser the LDM route's pretraining continues from ('none': random weights)",
    )
    parser.add_argument(
        "--routes", nargs="+", default=None, help="routes to measure (default: the export's, plus genseg per budget)"
    )
    parser.add_argument("--home", default=os.environ.get("HISTOFACTORY_HOME", "data"), help="a finished demo's home")
    parser.add_argument("--export", default=None, help="export version (default: the newest)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1 degrades best on shared cores)")
    parser.add_argument(
        "--workers", type=int, default=min(2, os.cpu_count() or 1), help="processes for the (budget, seed) points"
    )
    parser.add_argument(
        "--export-pairs", action="store_true", help="use the exported pairs (labels beyond the budget: upper bound)"
    )
    parser.add_argument(
        "--runs-csv",
        default=None,
        help="also write every (budget, arm, seed, λ, share) run's validation and test scores here",
    )
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    home = Path(args.home)
    ref_file = home / "refs" / "real_annotations" / "_.json"
    if not ref_file.exists():
        raise SystemExit(f"{ref_file}: no real pairs; run `HISTOFACTORY_HOME={home} histofactory demo` first")
    ref = read_reference(ref_file)  # what downstream_eval receives: the pairs' file and class map
    real = RealPairs.load(Path(ref.path))
    classes = list(get_class_map(ref.class_map or "demo").classes)
    export = _latest_export(home, args.export)
    cfg = CurveConfig(**QUICK) if args.quick else CurveConfig()
    overrides = {
        "budgets": tuple(args.budgets or cfg.budgets),
        "seeds": tuple(args.seeds or cfg.seeds),
        "lambdas": tuple(args.lambdas or cfg.lambdas),
        "pretrain_shares": tuple(args.pretrain_shares or cfg.pretrain_shares),
        "arms": tuple(args.arms or cfg.arms),
    }
    try:
        cfg = CurveConfig(**{**cfg.to_dict(), **overrides})
    except ValueError as err:  # e.g. --arms without real: say which setting, no traceback
        raise SystemExit(f"bench/downstream.py: {err}") from None
    print(f"real crops {real.counts()}; export {export.name}; {cfg.to_dict()}", flush=True)
    start = time.perf_counter()
    # A route retrained per budget needs no export (GenSeg trains from the crops and the tiles alone).
    # An export made since GenSeg joined the factory already has genseg pairs: each route once.
    routes = args.routes or list(dict.fromkeys(mask_routes(export) + ([] if args.export_pairs else ["genseg"])))
    retraining = QUICK_RETRAINING if args.quick else RouteRetraining()
    label_free = None if args.ldm_label_free.lower() == "none" else args.ldm_label_free
    if label_free and not Path(label_free).is_file():
        raise SystemExit(f"--ldm-label-free {label_free}: no such file; pass another or 'none' (random weights)")
    retraining = dataclasses.replace(
        retraining,
        gan_psi=args.gan_psi,
        gan_match_pool=args.gan_match_pool,
        gan_ignore_uncertain=args.gan_ignore_uncertain,
        ldm_guidance=args.ldm_guidance,
        ldm_label_free=label_free,
    )
    per_budget = {}
    if not args.export_pairs:
        val_x, val_y, _ = real.part("val")
        per_budget = build_budget_routes(
            routes, classes, route_files(home), retraining, lambda s: print(s, flush=True), (val_x, val_y)
        )
    missing = sorted(set(routes) - set(per_budget) - set(mask_routes(export)))
    if missing:
        raise SystemExit(f"routes {missing}: neither in export {export.name} nor retrainable per budget")
    labeller = demo_labels if (ref.class_map or "demo") == "demo" else None  # the stand-in labels any image
    result = run_downstream(
        real,
        classes,
        export,
        cfg,
        routes,
        progress=lambda s: print(s, flush=True),
        budget_routes=per_budget,
        labeller=labeller,
        workers=args.workers,
    )
    summary = result.curve.summary
    cols = ["budget", "arm", "lambda", "pretrain_share", "mean_dice", "mean_dice_sd", "gain_mean_dice",
            "ci_low_mean_dice", "ci_high_mean_dice", "mean_jaccard", "real_passes", "route_labels",
            "route_fidelity"]  # fmt: skip
    print(summary[cols].to_string(index=False, float_format=lambda v: f"{v:.3f}"))
    per_class = [c for c in summary.columns if c.startswith("dice/")]
    print("test Dice per class:")
    print(summary[["budget", "arm", *per_class]].to_string(index=False, float_format=lambda v: f"{v:.3f}"))
    print(
        f"chosen on validation: lambda {result.curve.lambdas}, pre-training share {result.curve.pretrain_shares}; "
        f"{time.perf_counter() - start:.0f} s"
    )
    # Validation Dice is what a choice between two settings of a route may look at (the test split may not).
    settings = ["budget", "arm", "lambda", "pretrain_share"]
    val = result.curve.runs.groupby(settings, as_index=False, dropna=False)["val_mean_dice"].mean()
    print("validation mean Dice (mean over seeds):")
    print(val.to_string(index=False, float_format=lambda v: f"{v:.4f}"))
    if args.runs_csv:
        result.curve.runs.to_csv(args.runs_csv, index=False)
        print(f"runs written to {args.runs_csv}")
    print(f"routes retrained per budget: {result.per_budget or 'none (exported pairs: labels beyond the budget)'}")
    short = summary[summary["route_labels"] < summary["budget"]]
    for arm, budget, labels in short[["arm", "budget", "route_labels"]].itertuples(index=False):
        print(
            f"note: {arm} at N = {budget} used {labels:.0f} labels, fewer than the budget (the GAN route stops at "
            "the annotated generated images: annotate more, `annotations.demo_count` on the demo)"
        )
    v, n = result.verdict, result.verdict["smallest_budget"]
    scores = []
    headline = result.headline()
    for route in result.routes:
        stats = result.label_scores.get("routes", {}).get(route, {})
        scores.append(f"fidelity_{route}={stats.get('fidelity', float('nan')):.3f}")
        if "fidelity_all_pixels" in stats:  # exports since the every-pixel score
            scores.append(f"fidelity_all_pixels_{route}={stats['fidelity_all_pixels']:.3f}")
        scores.append(f"judge_{route}={stats.get('judge_agreement', float('nan')):.3f}")
        scores.append(f"budget_fidelity_{route}={headline.get(f'budget_fidelity_{route}', float('nan')):.3f}")
    scores += [f"gain_at_{n}={v['gain_small']:.3f}", f"ci_low_at_{n}={v['ci_low_small']:.3f}"]
    scores += [f"best_arm_at_{n}={v['best_arm_small']}", f"gain_at_max={v['gain_at_max']:.3f}"]
    print(" ".join(scores))


if __name__ == "__main__":
    main()
