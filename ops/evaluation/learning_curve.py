"""The low-label learning curve: at each label budget N, does adding synthetic pairs beat training on the N real crops?

Protocol (fixed by the papers and the validation set, never tuned on test):

* **Equal label budget.** At budget N every arm sees the same N labelled real crops for a seed (``budget_indices``)
  and no other real label; seeds pair the arms (same crops, same initial weights).
* **Arms.** ``real`` (the N crops, no augmentation); ``real_aug`` (flips/rotations plus HED stain jitter, the
  baseline GenSeg beats); per synthetic route ``syn_only:<route>``; ``mix:<route>`` — two loaders, a real batch and a
  synthetic batch per step, loss ``(1 − λ)·L_real + λ·L_syn`` (DISC Eq. 4; GenSeg's ``L_real + γ·L_fake`` is the
  same family), λ from a set and chosen per N on the validation crops; ``syn_then_real:<route>`` — pre-train on the
  synthetic pairs, then fine-tune on the real crops; the pre-training length (a share of the fine-tune's steps) from
  a set and chosen per N on the validation crops, as λ is.
* **Equal real passes.** Every arm that sees real crops draws them from the same cycling sampler with the same batch
  and step count, so each real crop is seen equally often (``real_passes`` in the table proves it); synthetic-only
  sees none. Pre-training adds steps on synthetic pairs only.
* **Normalisation.** BatchNorm whose statistics are re-estimated on the real crops after training
  (``reestimate_batchnorm``), so synthetic images never set what real test images are normalised with; chosen over
  GroupNorm by measurement (README).
* **Metrics.** Mean Dice and Jaccard (GenSeg reports Jaccard) and per-class Dice on the test crops; each arm's paired
  difference to ``real`` over seeds with a 95 % percentile-bootstrap CI of the mean.
"""

from __future__ import annotations

import copy
import io
import math
import multiprocessing as mp
import signal
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Protocol

import numpy as np
import pandas as pd
import torch
from PIL import Image, ImageDraw
from torch import nn

from ops.common.config_dict import DictConfig
from ops.evaluation.losses import LOSSES, segmentation_loss
from ops.evaluation.metrics import IGNORE_INDEX, confusion_matrix, dice_per_class
from ops.evaluation.real_split import RealPairs, budget_indices
from ops.evaluation.segmenter import ARCHS, build_segmenter, predict_segmenter
from ops.evaluation.stain_jitter import classical_augment
from ops.export.label_scores import Labeller, fidelity

ARMS = ("real", "real_aug", "syn_only", "mix", "syn_then_real")
ROUTE_ARMS = ("syn_only", "mix", "syn_then_real")  # one arm per synthetic route
NORMS = ("group", "batch")
ALL = 0  # budget value meaning "every labelled training crop"
NO_PRETRAINING = float("nan")  # the pre-training share of arms that do not pre-train

Progress = Callable[[str], None]


class BudgetRoute(Protocol):
    """A synthetic route whose labelled part is retrained on each budget's crops (``ops.evaluation.budget_routes``)."""

    def pairs(
        self, images: np.ndarray, masks: np.ndarray, n_pairs: int, seed: int
    ) -> tuple[np.ndarray, np.ndarray, int]:
        """``n_pairs`` pairs (uint8 images ``[M, R, R, 3]``, masks ``[M, R, R]``) and the labels the route used."""
        ...


SyntheticSource = tuple[np.ndarray, np.ndarray] | BudgetRoute  # fixed (exported) pairs, or a route per budget


@dataclass(frozen=True)
class CurveConfig(DictConfig):
    """What the learning curve trains. Defaults follow the issue's protocol (budgets, ≥ 5 seeds, λ set)."""

    budgets: tuple[int, ...] = (4, 8, 16, 32, 64, ALL)  # label budgets N in crops; 0 = all labelled training crops
    seeds: tuple[int, ...] = (0, 1, 2, 3, 4)  # seeds per point; pair the arms
    lambdas: tuple[float, ...] = (0.1, 0.3, 0.5)  # synthetic loss weights tried; one chosen per N on validation
    # syn_then_real's pre-training steps as a share of its fine-tune steps; one chosen per N on validation. The
    # shares are snapshots of one pre-training run, so a set costs one pre-training plus one fine-tune per share.
    # At N = 96 on the demo's GAN pairs validation chose 0.25 (0.8058; 0.5: 0.8024, 1: 0.7956) by a rule written
    # before the run; (1.0,) is the arm as it was (README, "Measuring the value").
    pretrain_shares: tuple[float, ...] = (0.25, 0.5, 1.0)
    arms: tuple[str, ...] = ARMS  # which arms run
    real_passes: int = 100  # passes over the N real crops, the same for every arm that sees real crops
    min_steps: int = 200  # floor on optimiser steps (at N = 4, 100 passes would be 50 steps)
    batch_real: int = 8  # real crops per step (capped at N)
    batch_syn: int = 8  # synthetic pairs per step
    lr: float = 1e-3  # Adam
    base_channels: int = 16  # segmenter width
    norm: str = "batch"  # "batch" (statistics re-estimated on the real crops after training) | "group"
    # Measured on stand-in-labelled IHC crops (N = 4 / 16, 3 seeds, same steps): the hand-written U-Net with
    # cross-entropy reached mean Dice 0.386 / 0.544 with BatchNorm, 0.304 / 0.295 with GroupNorm, MONAI's BasicUNet
    # with Dice + CE and GroupNorm 0.262 / 0.317 (README).
    arch: str = "handwritten"  # "handwritten" (ops.evaluation.segmenter.UNet) | "monai" (BasicUNet)
    loss: str = "ce"  # "ce" | "dice_ce" (MONAI Dice + cross-entropy)
    synthetic_max: int = 200  # synthetic pairs per route used
    n_boot: int = 2000  # bootstrap resamples of the seeds

    def __post_init__(self) -> None:
        unknown = sorted(set(self.arms) - set(ARMS))
        if unknown or not self.arms:
            raise ValueError(f"CurveConfig.arms: expected a non-empty subset of {ARMS}, received {self.arms}")
        if "real" not in self.arms:
            raise ValueError("CurveConfig.arms: 'real' is the reference every gain is measured against; keep it")
        if not self.seeds or not self.budgets:
            raise ValueError("CurveConfig: seeds and budgets must be non-empty")
        if any(b < 0 for b in self.budgets):
            raise ValueError(f"CurveConfig.budgets: expected crop counts >= 1 (or 0 = all), received {self.budgets}")
        if not self.lambdas or any(not 0 < lam < 1 for lam in self.lambdas):
            raise ValueError(f"CurveConfig.lambdas: expected weights in (0, 1), received {self.lambdas}")
        if not self.pretrain_shares or any(not share > 0 for share in self.pretrain_shares):
            raise ValueError(f"CurveConfig.pretrain_shares: expected shares > 0, received {self.pretrain_shares}")
        if self.norm not in NORMS:
            raise ValueError(f"CurveConfig.norm: expected one of {NORMS}, received {self.norm!r}")
        if self.arch not in ARCHS:
            raise ValueError(f"CurveConfig.arch: expected one of {ARCHS}, received {self.arch!r}")
        if self.loss not in LOSSES:
            raise ValueError(f"CurveConfig.loss: expected one of {LOSSES}, received {self.loss!r}")
        for name in ("real_passes", "min_steps", "batch_real", "batch_syn", "synthetic_max", "n_boot"):
            if getattr(self, name) < 1:
                raise ValueError(f"CurveConfig.{name}: expected >= 1, received {getattr(self, name)}")

    def steps(self, budget: int) -> int:
        """Optimiser steps at budget N: ``real_passes`` passes of ``min(batch_real, N)`` crops, at least min_steps."""
        return max(self.min_steps, math.ceil(self.real_passes * budget / min(self.batch_real, budget)))


# ----------------------------------------------------------------------------------------------------------------
# Loss and samplers.


def mixed_loss(
    logits_real: torch.Tensor | None,
    y_real: torch.Tensor | None,
    logits_syn: torch.Tensor | None,
    y_syn: torch.Tensor | None,
    lam: float,
    kind: str = "ce",
    ignore_index: int = IGNORE_INDEX,
) -> torch.Tensor:
    """``(1 − λ)·L(real) + λ·L(syn)``; a missing side contributes nothing (λ = 0: real only, λ = 1: syn only)."""
    loss = torch.zeros(())
    if logits_real is not None and lam < 1:
        loss = loss + (1 - lam) * segmentation_loss(logits_real, y_real, kind, ignore_index)
    if logits_syn is not None and lam > 0:
        loss = loss + lam * segmentation_loss(logits_syn, y_syn, kind, ignore_index)
    return loss


class CyclingSampler:
    """Batches of a fixed set, visiting every item once per pass in a seeded random order; counts items drawn."""

    def __init__(self, images: np.ndarray, masks: np.ndarray, batch: int, generator: torch.Generator) -> None:
        if len(images) == 0:
            raise ValueError("CyclingSampler: empty set")
        self.x = torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).float() / 127.5 - 1
        self.y = torch.from_numpy(np.ascontiguousarray(masks)).long()
        self.batch, self.gen = min(batch, len(images)), generator
        self.order, self.drawn = torch.empty(0, dtype=torch.long), 0

    def next(self) -> tuple[torch.Tensor, torch.Tensor]:
        if len(self.order) < self.batch:
            self.order = torch.cat([self.order, torch.randperm(len(self.x), generator=self.gen)])
        idx, self.order = self.order[: self.batch], self.order[self.batch :]
        self.drawn += len(idx)
        return self.x[idx], self.y[idx]

    def passes(self) -> float:
        return self.drawn / len(self.x)


# ----------------------------------------------------------------------------------------------------------------
# Training one arm.


@dataclass
class ArmResult:
    """A trained model and how much real data it saw."""

    model: nn.Module
    real_passes: float
    steps: int


def train_arm(
    arm: str,  # one of ARMS (without the route suffix)
    real: tuple[np.ndarray, np.ndarray],  # the budget's N real crops (uint8 images, masks)
    synthetic: tuple[np.ndarray, np.ndarray] | None,  # one route's pairs (None for real / real_aug)
    cfg: CurveConfig,
    n_classes: int,
    seed: int,
    lam: float = 0.0,  # synthetic loss weight of the mix arm
    pretrain_share: float = 1.0,  # syn_then_real: pre-training steps as a share of the fine-tune's
) -> ArmResult:
    """Train a fresh segmenter for one arm, budget and seed (same seed = same initial weights in every arm)."""
    if arm not in ARMS:
        raise ValueError(f"train_arm: unknown arm {arm!r}; expected one of {ARMS}")
    if arm in ROUTE_ARMS and synthetic is None:
        raise ValueError(f"train_arm: arm {arm!r} needs synthetic pairs")
    if arm == "syn_then_real":
        return train_syn_then_real(real, synthetic, cfg, n_classes, seed, (pretrain_share,))[pretrain_share]
    steps = cfg.steps(len(real[0]))
    model, gen = _start(cfg, n_classes, seed)
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    real_s = CyclingSampler(*real, cfg.batch_real, gen)
    syn_s = CyclingSampler(*synthetic, cfg.batch_syn, gen) if synthetic is not None else None
    augment = classical_augment if arm == "real_aug" else None
    if arm == "syn_only":
        _fit(model, opt, None, syn_s, 1.0, steps, gen, None, cfg.loss)
    elif arm == "mix":
        _fit(model, opt, real_s, syn_s, lam, steps, gen, None, cfg.loss)
    else:
        _fit(model, opt, real_s, None, 0.0, steps, gen, augment, cfg.loss)
    return ArmResult(_finish(model, cfg, real[0]), real_s.passes(), steps)


def train_syn_then_real(
    real: tuple[np.ndarray, np.ndarray],
    synthetic: tuple[np.ndarray, np.ndarray],
    cfg: CurveConfig,
    n_classes: int,
    seed: int,
    shares: Sequence[float],
) -> dict[float, ArmResult]:
    """Pre-train on the synthetic pairs, snapshot at each share of the fine-tune's steps, fine-tune every snapshot.

    The fine-tune is the ``real`` arm's (its steps and real passes) with fresh Adam moments, as a user would start
    one. Snapshots of one pre-training make the shares differ only in length (same weights and draws up to the
    shorter one) and cost one pre-training instead of one per share; a share trained alone gives the same model.
    """
    if not shares or any(not share > 0 for share in shares):
        raise ValueError(f"train_syn_then_real: expected pre-training shares > 0, received {shares}")
    steps = cfg.steps(len(real[0]))
    model, gen = _start(cfg, n_classes, seed)
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    syn_s = CyclingSampler(*synthetic, cfg.batch_syn, gen)
    results, done = {}, 0
    for share in sorted(set(shares)):
        target = max(1, round(share * steps))
        _fit(model, opt, None, syn_s, 1.0, target - done, gen, None, cfg.loss)
        done = target
        tuned, tune_gen = copy.deepcopy(model), torch.Generator()
        tune_gen.set_state(gen.get_state())
        real_s = CyclingSampler(*real, cfg.batch_real, tune_gen)
        tune_opt = torch.optim.Adam(tuned.parameters(), lr=cfg.lr)
        _fit(tuned, tune_opt, real_s, None, 0.0, steps, tune_gen, None, cfg.loss)
        results[share] = ArmResult(_finish(tuned, cfg, real[0]), real_s.passes(), steps)
    return results


def _start(cfg: CurveConfig, n_classes: int, seed: int) -> tuple[nn.Module, torch.Generator]:
    """The seed's initial segmenter (in training mode) and its sampling generator: the same in every arm."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = build_segmenter(n_classes, cfg.base_channels, cfg.norm, cfg.arch)
    # channels-last lets oneDNN skip its layout reorders: ~15 % faster training steps on CPU (same operations; only
    # the summation order may differ, so single runs differ in the last bits).
    model = model.to(memory_format=torch.channels_last)
    model.train()
    return model, torch.Generator().manual_seed(seed)


def _finish(model: nn.Module, cfg: CurveConfig, real_images: np.ndarray) -> nn.Module:
    """The trained model for evaluation, BatchNorm statistics re-estimated on the real crops where it has them."""
    if cfg.norm == "batch":
        reestimate_batchnorm(model, real_images)
    return model.eval()


def _fit(
    model: nn.Module,
    opt: torch.optim.Optimizer,
    real: CyclingSampler | None,
    syn: CyclingSampler | None,
    lam: float,
    steps: int,
    gen: torch.Generator,
    augment: Callable | None,
    kind: str,
) -> None:
    """``steps`` Adam steps on the mixed loss; with both loaders, one forward pass per loader.

    Separate passes keep BatchNorm's training-time batch statistics per domain: the real crops' loss is optimised
    under real-only statistics, which is what ``reestimate_batchnorm`` gives them at test time. One pass over the
    concatenated [real; synthetic] batch normalised the real crops with statistics dominated by the synthetic
    images, so the real fit broke when the statistics were re-estimated: on the demo's exported LDM pairs at N = 4
    (seed 0) the mix arm reached test Dice 0.476 at λ 0.1 and 0.591 at λ 0.5 that way, 0.717 and 0.690 with one
    pass per loader (``real`` 0.436); smaller λ scoring lower was the symptom (README, learning curve).
    """
    for _ in range(steps):
        parts = []
        if real is not None:
            parts.append(real.next())
        if syn is not None:
            parts.append(syn.next())
        if augment is not None:
            parts = [augment(x, y, gen) for x, y in parts]
        logits = [model(x.contiguous(memory_format=torch.channels_last)) for x, _ in parts]
        loss = mixed_loss(
            logits[0] if real is not None else None,
            parts[0][1] if real is not None else None,
            logits[-1] if syn is not None else None,
            parts[-1][1] if syn is not None else None,
            lam,
            kind,
        )
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()


@torch.no_grad()
def reestimate_batchnorm(model: nn.Module, images: np.ndarray, batch: int = 32) -> None:
    """Replace BatchNorm running statistics by their cumulative average over ``images`` (real crops only)."""
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if not norms:
        return
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # cumulative average
    model.train()
    x = torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).float() / 127.5 - 1
    for start in range(0, len(x), batch):
        model(x[start : start + batch])
    model.eval()


# ----------------------------------------------------------------------------------------------------------------
# Scoring.


def score(model: nn.Module, images: np.ndarray, masks: np.ndarray, class_names: Sequence[str]) -> dict[str, float]:
    """Mean Dice and Jaccard over classes present, and Dice per class, on labelled crops."""
    k = len(class_names)
    cm = confusion_matrix(masks, predict_segmenter(model, images), k)
    dice = dice_per_class(cm)
    tp = np.diag(cm).astype(np.float64)
    union = cm.sum(axis=0) + cm.sum(axis=1) - tp
    with np.errstate(invalid="ignore", divide="ignore"):
        jaccard = np.where(union > 0, tp / union, np.nan)
    out = {"mean_dice": _nanmean(dice), "mean_jaccard": _nanmean(jaccard)}
    out.update({f"dice/{c}": float(d) for c, d in zip(class_names, dice, strict=True)})
    return out


def paired_bootstrap(diffs: np.ndarray, n_boot: int = 2000, seed: int = 0) -> tuple[float, float, float]:
    """Mean of paired per-seed differences and its 95 % percentile-bootstrap CI (resampling seeds)."""
    diffs = np.asarray(diffs, np.float64)
    diffs = diffs[np.isfinite(diffs)]
    if len(diffs) == 0:
        return float("nan"), float("nan"), float("nan")
    draws = np.random.default_rng(seed).choice(diffs, (n_boot, len(diffs)), replace=True).mean(axis=1)
    return float(diffs.mean()), float(np.quantile(draws, 0.025)), float(np.quantile(draws, 0.975))


# ----------------------------------------------------------------------------------------------------------------
# The curve.


@dataclass
class CurveResult:
    """Per-run rows, per-point summary, and the λ and pre-training share chosen per budget and route."""

    runs: pd.DataFrame  # one row per (budget, arm, seed, λ, pre-training share): val and test metrics, passes, steps
    summary: pd.DataFrame  # one row per (budget, arm): means, sd, gain vs real with CI
    lambdas: dict[str, dict[str, float]] = field(default_factory=dict)  # budget -> route -> chosen λ
    pretrain_shares: dict[str, dict[str, float]] = field(default_factory=dict)  # budget -> route -> chosen share


def learning_curve(
    real: RealPairs,  # leak-free real pairs (train = the labelled pool; val; test)
    synthetic: Mapping[str, SyntheticSource],  # route -> fixed (images, masks) pairs, or a route retrained per budget
    class_names: Sequence[str],
    cfg: CurveConfig,
    progress: Progress | None = None,
    labeller: Labeller | None = None,  # labels any image (the demo stand-in): scores retrained routes' pairs
    workers: int = 1,  # processes training (budget, seed) points side by side; the result does not depend on it
) -> CurveResult:
    """Train every arm at every budget and seed; choose λ per budget on validation; summarise against ``real``.

    A route given as fixed pairs (an export) is the same at every budget: its labelled part saw every annotated tile,
    so its gain is an upper bound (``route_labels`` NaN in the tables). A :class:`BudgetRoute` makes its pairs from
    each budget's N crops and seed, so it honours the equal label budget (``route_labels`` = labels it used); with a
    ``labeller``, the label fidelity of those pairs is measured too (``route_fidelity``, the export's metric).

    Every (budget, seed) point is seeded on its own, so ``workers`` > 1 (forked processes of one torch thread each,
    on CPU) gives the same table as one process, sooner: the points are independent and each is a few minutes.

    Raises:
        ValueError: a budget larger than the labelled crops, a route with fewer pairs than ``synthetic_max``, or no
            validation / test crops.
    """
    train_x, _, train_ids = real.part("train")
    if len(real.part("val")[0]) == 0 or len(real.part("test")[0]) == 0:
        raise ValueError("learning_curve: real pairs have no validation or no test crops; rematerialize them")
    budgets = sorted({len(train_x) if b == ALL else b for b in cfg.budgets})
    for b in budgets:
        budget_indices(train_ids, b, 0)  # fail before any training on a budget above the labelled crops
    routes: dict[str, SyntheticSource] = {}
    for route, source in sorted(synthetic.items()):
        if isinstance(source, tuple):
            source = _enough_pairs(route, *source, cfg.synthetic_max)
        routes[route] = source
    job = _CurveJob(real, routes, list(class_names), cfg, progress, labeller)
    units = [(budget, seed) for budget in budgets for seed in cfg.seeds]
    rows = [row for unit_rows in _map_units(job, units, workers) for row in unit_rows]
    runs = pd.DataFrame(rows)
    chosen, lambdas = choose_lambda(runs)
    chosen, shares = choose_pretrain_share(chosen)
    return CurveResult(runs, summarise_curve(chosen, cfg.n_boot), lambdas, shares)


@dataclass
class _CurveJob:
    """What every (budget, seed) point needs; forked workers inherit it instead of unpickling models."""

    real: RealPairs
    routes: dict[str, SyntheticSource]
    class_names: list[str]
    cfg: CurveConfig
    progress: Progress | None
    labeller: Labeller | None

    def point(self, budget: int, seed: int) -> list[dict]:
        """Retrain the per-budget routes and train every arm at one budget and seed; one row per run."""
        cfg, class_names, progress = self.cfg, self.class_names, self.progress
        train_x, train_y, train_ids = self.real.part("train")
        val_x, val_y, _ = self.real.part("val")
        test_x, test_y, _ = self.real.part("test")
        pick = budget_indices(train_ids, budget, seed)
        crops = (train_x[pick], train_y[pick])
        pairs, labels_used, route_fidelity = {}, {}, {}
        for route, source in self.routes.items():
            if isinstance(source, tuple):
                pairs[route], labels_used[route] = source, float("nan")
                continue
            started = time.perf_counter()
            x, y, used = source.pairs(*crops, cfg.synthetic_max, seed)
            pairs[route], labels_used[route] = _enough_pairs(route, x, y, cfg.synthetic_max), float(used)
            if self.labeller is not None:
                route_fidelity[route] = _nanmean(fidelity(*pairs[route], self.labeller, len(class_names))[0])
            if progress is not None:
                progress(
                    f"N={budget} seed={seed} {route}: retrained on {used} labels, {len(x)} pairs in "
                    f"{time.perf_counter() - started:.0f} s, fidelity {route_fidelity.get(route, float('nan')):.3f}"
                )
        rows = []
        for arm, route, lam in _plan(cfg, self.routes):
            started = time.perf_counter()
            if arm == "syn_then_real":
                trained = train_syn_then_real(crops, pairs[route], cfg, len(class_names), seed, cfg.pretrain_shares)
            else:
                trained = {NO_PRETRAINING: train_arm(arm, crops, pairs.get(route), cfg, len(class_names), seed, lam)}
            for share, result in trained.items():
                val = score(result.model, val_x, val_y, class_names)
                test = score(result.model, test_x, test_y, class_names)
                rows.append(
                    {
                        "budget": budget,
                        "arm": f"{arm}:{route}" if route else arm,
                        "route": route or "",
                        "route_labels": labels_used.get(route, float("nan")),
                        "route_fidelity": route_fidelity.get(route, float("nan")),
                        "lambda": lam,
                        "pretrain_share": share,
                        "seed": seed,
                        "steps": result.steps,
                        "real_passes": result.real_passes,
                        "val_mean_dice": val["mean_dice"],
                        **test,
                    }
                )
                if progress is not None:
                    progress(
                        f"N={budget} seed={seed} {_run_name(rows[-1])}: test Dice {test['mean_dice']:.3f} "
                        f"({time.perf_counter() - started:.0f} s)"
                    )
        return rows


def _run_name(row: dict) -> str:
    if row["arm"].startswith("mix:"):
        return f"{row['arm']} λ={row['lambda']}"
    if row["arm"].startswith("syn_then_real:"):
        return f"{row['arm']} pre-training {row['pretrain_share']:g}"
    return row["arm"]


_FORKED_JOB: _CurveJob | None = None  # set in the parent just before forking; read by the workers


def _worker_start() -> None:
    """Pool workers die on the SIGTERM of ``Pool.terminate`` even where the parent ignores SIGTERM (forked workers
    inherit SIG_IGN, and the parent then waits forever in ``terminate``'s join after a point fails; seen in two CI
    runs whose pytest process had SIGTERM ignored, for a reason not pinned down)."""
    signal.signal(signal.SIGTERM, signal.SIG_DFL)


def _forked_point(unit: tuple[int, int]) -> list[dict]:
    torch.set_num_threads(1)  # one thread per process degrades best on shared cores (bench/threads.py, README)
    assert _FORKED_JOB is not None, "worker started without a curve job"
    return _FORKED_JOB.point(*unit)


def _map_units(job: _CurveJob, units: list[tuple[int, int]], workers: int) -> list[list[dict]]:
    """Run the points in order, in ``workers`` forked processes where that is safe (CPU, fork available).

    Workers report nothing themselves (a Dagster logger must not be written from a forked child); the parent reports
    each point as it returns.
    """
    global _FORKED_JOB
    workers = min(workers, len(units))
    forkable = "fork" in mp.get_all_start_methods() and not torch.cuda.is_initialized()
    if workers <= 1 or not forkable:
        if workers > 1 and job.progress is not None:
            job.progress(f"learning curve: {workers} workers need fork and no CUDA context; running in one process")
        return [job.point(*unit) for unit in units]
    _FORKED_JOB = replace(job, progress=None)
    results = []
    try:
        with mp.get_context("fork").Pool(workers, initializer=_worker_start) as pool:
            for (budget, seed), rows in zip(units, pool.imap(_forked_point, units), strict=True):
                results.append(rows)
                if job.progress is not None:
                    dice = ", ".join(f"{_run_name(r)} {r['mean_dice']:.3f}" for r in rows)
                    job.progress(f"N={budget} seed={seed} ({len(results)}/{len(units)} points): test Dice {dice}")
    finally:
        _FORKED_JOB = None
    return results


def _enough_pairs(route: str, x: np.ndarray, y: np.ndarray, wanted: int) -> tuple[np.ndarray, np.ndarray]:
    """The first ``wanted`` pairs of a route; a clear error when it has fewer."""
    if len(x) < wanted:
        raise ValueError(
            f"synthetic route {route!r} has {len(x)} pairs but synthetic_max={wanted} were requested; "
            f"export more batches or lower synthetic_max"
        )
    return x[:wanted], y[:wanted]


def _plan(cfg: CurveConfig, routes: Mapping[str, object]) -> list[tuple[str, str, float]]:
    """(arm, route, λ) per run: real arms once, route arms once per route, the mix arm once per λ."""
    plan: list[tuple[str, str, float]] = []
    for arm in cfg.arms:
        if arm in ROUTE_ARMS:
            for route in routes:
                lams = cfg.lambdas if arm == "mix" else (1.0 if arm == "syn_only" else 0.0,)
                plan.extend((arm, route, lam) for lam in lams)
        else:
            plan.append((arm, "", 0.0))
    return plan


def choose_lambda(runs: pd.DataFrame) -> tuple[pd.DataFrame, dict[str, dict[str, float]]]:
    """Keep, per budget and mix arm, the λ with the best mean validation Dice over seeds (never test)."""
    return _choose_on_validation(runs, "mix", "lambda")


def choose_pretrain_share(runs: pd.DataFrame) -> tuple[pd.DataFrame, dict[str, dict[str, float]]]:
    """Keep, per budget and syn_then_real arm, the pre-training share with the best mean validation Dice."""
    return _choose_on_validation(runs, "syn_then_real", "pretrain_share")


def _choose_on_validation(
    runs: pd.DataFrame, arm_kind: str, column: str
) -> tuple[pd.DataFrame, dict[str, dict[str, float]]]:
    """Keep, per budget and ``arm_kind`` arm, the ``column`` value with the best mean validation Dice over seeds;
    return the kept runs and the choice as budget -> route -> value."""
    mine = runs["arm"].str.startswith(f"{arm_kind}:")
    keep = [runs[~mine]]
    chosen: dict[str, dict[str, float]] = {}
    for (budget, arm), group in runs[mine].groupby(["budget", "arm"]):
        best = group.groupby(column)["val_mean_dice"].mean().idxmax()
        keep.append(group[group[column] == best])
        chosen.setdefault(str(budget), {})[arm.split(":", 1)[1]] = float(best)
    return pd.concat(keep, ignore_index=True), chosen


def summarise_curve(runs: pd.DataFrame, n_boot: int = 2000) -> pd.DataFrame:
    """Mean ± sd per (budget, arm), and the paired gain over ``real`` (same seeds) with its bootstrap CI."""
    out = []
    for (budget, arm), group in runs.groupby(["budget", "arm"], sort=True):
        ref = runs[(runs["budget"] == budget) & (runs["arm"] == "real")].set_index("seed")
        mine = group.set_index("seed")
        common = mine.index.intersection(ref.index)
        row = {
            "budget": int(budget),
            "arm": arm,
            "lambda": float(group["lambda"].iloc[0]),
            "pretrain_share": float(group["pretrain_share"].iloc[0]) if "pretrain_share" in group else float("nan"),
            "seeds": len(group),
            "real_passes": float(group["real_passes"].mean()),
            "route_labels": _nanmean(group["route_labels"]) if "route_labels" in group else float("nan"),
            "route_fidelity": _nanmean(group["route_fidelity"]) if "route_fidelity" in group else float("nan"),
        }
        for metric in ("mean_dice", "mean_jaccard"):
            row[f"{metric}"] = float(group[metric].mean())
            row[f"{metric}_sd"] = float(group[metric].std(ddof=1)) if len(group) > 1 else float("nan")
            diffs = (mine.loc[common, metric] - ref.loc[common, metric]).to_numpy()
            gain, lo, hi = paired_bootstrap(diffs, n_boot) if arm != "real" else (0.0, 0.0, 0.0)
            row[f"gain_{metric}"], row[f"ci_low_{metric}"], row[f"ci_high_{metric}"] = gain, lo, hi
        for col in (c for c in runs.columns if c.startswith("dice/")):
            row[col] = float(group[col].mean())
        out.append(row)
    return pd.DataFrame(out)


# ----------------------------------------------------------------------------------------------------------------
# Verdict and picture.


def curve_verdict(summary: pd.DataFrame, small_budget: int = 8) -> dict:
    """``synthetic_helps`` logic: passes when a synthetic arm beats ``real`` at some N ≤ ``small_budget`` with the
    CI above 0; warns when any synthetic arm at the largest N loses by more than its CI (CI entirely below 0).

    Returns:
        ``passed``, ``helping`` (``["<arm>@N=<n>", ...]``), ``losing_at_max``, ``best_small`` (arm, gain, CI low of
        the best synthetic arm at the smallest budget) and ``gain_at_max`` (best synthetic gain at the largest N).
    """
    syn = summary[~summary["arm"].isin(["real", "real_aug"])]
    helping = syn[(syn["budget"] <= small_budget) & (syn["ci_low_mean_dice"] > 0)]
    largest = summary["budget"].max()
    at_max = syn[syn["budget"] == largest]
    losing = at_max[at_max["ci_high_mean_dice"] < 0]
    smallest = syn[syn["budget"] == summary["budget"].min()].dropna(subset=["gain_mean_dice"])
    best = smallest.loc[smallest["gain_mean_dice"].idxmax()] if len(smallest) else None
    return {
        "passed": bool(len(helping)) and not len(losing),
        "helping": [f"{a}@N={int(n)}" for a, n in zip(helping["arm"], helping["budget"], strict=True)],
        "losing_at_max": sorted(losing["arm"].tolist()),
        "smallest_budget": int(summary["budget"].min()),
        "largest_budget": int(largest),
        "best_arm_small": str(best["arm"]) if best is not None else "",
        "gain_small": float(best["gain_mean_dice"]) if best is not None else float("nan"),
        "ci_low_small": float(best["ci_low_mean_dice"]) if best is not None else float("nan"),
        "ci_high_small": float(best["ci_high_mean_dice"]) if best is not None else float("nan"),
        "gain_at_max": float(at_max["gain_mean_dice"].max()) if len(at_max) else float("nan"),
    }


_PALETTE = [(31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189), (140, 86, 75),
            (227, 119, 194), (127, 127, 127), (188, 189, 34), (23, 190, 207)]  # fmt: skip


def curve_png(summary: pd.DataFrame, width: int = 640, height: int = 400) -> bytes:
    """Mean Dice vs N (log scale), one line per arm, with the band mean ± (CI half-width of its gain) shaded."""
    img = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(img, "RGBA")
    left, right, top, bottom = 50, width - 170, 20, height - 40
    budgets = sorted(summary["budget"].unique())
    lo = float(np.nanmin(summary["mean_dice"])) - 0.05
    hi = float(np.nanmax(summary["mean_dice"])) + 0.05
    span = max(math.log(budgets[-1] / budgets[0]), 1e-9)

    def xy(n: float, v: float) -> tuple[float, float]:
        fx = math.log(n / budgets[0]) / span if len(budgets) > 1 else 0.5
        return left + fx * (right - left), bottom - (v - lo) / max(hi - lo, 1e-9) * (bottom - top)

    draw.rectangle([left, top, right, bottom], outline="black")
    for n in budgets:
        x, _ = xy(n, lo)
        draw.text((x - 6, bottom + 5), str(int(n)), fill="black")
    for v in np.linspace(lo, hi, 5):
        _, y = xy(budgets[0], v)
        draw.text((5, y - 6), f"{v:.2f}", fill="black")
    draw.text((left, bottom + 22), "label budget N (crops, log scale) vs test mean Dice", fill="black")
    for i, (arm, group) in enumerate(summary.groupby("arm", sort=True)):
        colour = _PALETTE[i % len(_PALETTE)]
        group = group.sort_values("budget")
        pts = [xy(n, v) for n, v in zip(group["budget"], group["mean_dice"], strict=True)]
        half = ((group["ci_high_mean_dice"] - group["ci_low_mean_dice"]) / 2).fillna(0).to_numpy()
        upper = [xy(n, v + h) for n, v, h in zip(group["budget"], group["mean_dice"], half, strict=True)]
        lower = [xy(n, v - h) for n, v, h in zip(group["budget"], group["mean_dice"], half, strict=True)]
        if len(pts) > 1:
            draw.polygon(upper + lower[::-1], fill=(*colour, 40))
            draw.line(pts, fill=colour, width=2)
        for x, y in pts:
            draw.ellipse([x - 3, y - 3, x + 3, y + 3], fill=colour)
        draw.text((right + 10, top + 14 * i), arm, fill=colour)
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def _nanmean(values: np.ndarray) -> float:
    values = np.asarray(values, np.float64)
    return float(np.nanmean(values)) if np.isfinite(values).any() else float("nan")
