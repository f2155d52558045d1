"""The learning curve: λ-weighted loss, equal real passes, λ and pre-training length chosen on validation, bootstrap,
verdict, bad settings."""

from __future__ import annotations

import signal

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F
from curve_helpers import TINY, squares

from ops.evaluation.learning_curve import (
    CurveConfig,
    curve_png,
    curve_verdict,
    learning_curve,
    mixed_loss,
    paired_bootstrap,
    train_arm,
    train_syn_then_real,
)
from ops.evaluation.segmenter import UNet
from ops.evaluation.stain_jitter import hed_jitter


def test_mixed_loss_equals_the_hand_computed_mix() -> None:
    gen = torch.Generator().manual_seed(0)
    lr, ls = torch.randn(2, 3, 4, 4, generator=gen), torch.randn(3, 3, 4, 4, generator=gen)
    yr, ys = torch.randint(0, 3, (2, 4, 4), generator=gen), torch.randint(0, 3, (3, 4, 4), generator=gen)
    expected = 0.7 * F.cross_entropy(lr, yr) + 0.3 * F.cross_entropy(ls, ys)
    assert mixed_loss(lr, yr, ls, ys, 0.3).item() == pytest.approx(expected.item(), rel=1e-6)
    assert mixed_loss(lr, yr, None, None, 0.0).item() == pytest.approx(F.cross_entropy(lr, yr).item(), rel=1e-6)


def test_every_arm_makes_the_same_passes_over_the_real_crops(real) -> None:
    crops = real.part("train")[:2]
    syn = squares(6, 9)
    passes = {
        arm: train_arm(arm, crops, None if arm.startswith("real") else syn, TINY, 2, seed=0, lam=0.3).real_passes
        for arm in ("real", "real_aug", "mix", "syn_then_real", "syn_only")
    }
    assert passes["syn_only"] == 0
    assert len({v for k, v in passes.items() if k != "syn_only"}) == 1 and passes["real"] > 0


def test_the_mix_arm_never_normalises_real_and_synthetic_crops_in_one_batch() -> None:
    """BatchNorm statistics are re-estimated on real crops for testing, so training must use real-only ones too."""
    real = (np.zeros((4, 16, 16, 3), np.uint8), np.zeros((4, 16, 16), np.uint8))  # scaled to -1
    syn = (np.full((6, 16, 16, 3), 255, np.uint8), np.ones((6, 16, 16), np.uint8))  # scaled to +1
    batches: list[torch.Tensor] = []

    def record(module: torch.nn.Module, args: tuple) -> None:
        if isinstance(module, UNet):
            batches.append(args[0].detach().mean(dim=(1, 2, 3)))

    handle = torch.nn.modules.module.register_module_forward_pre_hook(record)
    try:
        train_arm("mix", real, syn, TINY, 2, seed=0, lam=0.5)
    finally:
        handle.remove()
    training = batches[: 2 * TINY.steps(4)]  # then reestimate_batchnorm's passes over the real crops
    assert len(training) == 2 * TINY.steps(4)
    assert all(len(torch.sign(b).unique()) == 1 for b in training)
    assert {float(torch.sign(b[0])) for b in training} == {-1.0, 1.0}


def _batch_signs(run) -> list[float]:
    """The sign of every U-Net input batch while ``run`` trains (real crops are all -1 below, synthetic +1)."""
    signs: list[float] = []

    def record(module: torch.nn.Module, args: tuple) -> None:
        if isinstance(module, UNet) and module.training:
            signs.append(float(torch.sign(args[0].detach().mean())))

    handle = torch.nn.modules.module.register_module_forward_pre_hook(record)
    try:
        run()
    finally:
        handle.remove()
    return signs


def test_pretraining_shares_are_snapshots_of_one_pretraining_each_fine_tuned_like_real() -> None:
    real = (np.zeros((4, 16, 16, 3), np.uint8), np.zeros((4, 16, 16), np.uint8))  # scaled to -1
    syn = (np.full((6, 16, 16, 3), 255, np.uint8), np.ones((6, 16, 16), np.uint8))  # scaled to +1
    cfg = CurveConfig(**{**TINY.to_dict(), "real_passes": 4})
    steps = cfg.steps(4)  # 8: shares 0.25 / 0.5 / 1 pre-train 2 / 4 / 8 steps
    results: dict = {}
    signs = _batch_signs(lambda: results.update(train_syn_then_real(real, syn, cfg, 2, 0, (1.0, 0.25, 0.5))))
    # one pre-training of 8 synthetic batches, interrupted at 2 and 4 by a fine-tune of 8 real batches (and the
    # real-only BatchNorm re-estimation, which runs in training mode too: one batch of the 4 crops)
    fine_tune = [-1.0] * (steps + 1)
    assert signs == [1.0] * 2 + fine_tune + [1.0] * 2 + fine_tune + [1.0] * 4 + fine_tune
    assert sorted(results) == [0.25, 0.5, 1.0]
    assert {r.real_passes for r in results.values()} == {steps * 2 / 4} and {r.steps for r in results.values()} == {8}
    # a share trained alone is the same model as its snapshot of the shared pre-training
    alone = train_arm("syn_then_real", real, syn, cfg, 2, seed=0, pretrain_share=0.5).model.state_dict()
    shared = results[0.5].model.state_dict()
    assert all(torch.equal(alone[k], shared[k]) for k in alone)
    longer = results[1.0].model.state_dict()
    assert not all(torch.equal(longer[k], shared[k]) for k in alone)


def test_curve_chooses_the_pretraining_share_on_validation(real) -> None:
    cfg = CurveConfig(**{**TINY.to_dict(), "arms": ("real", "syn_then_real"), "pretrain_shares": (0.5, 2.0)})
    result = learning_curve(real, {"gan": squares(8, 5)}, ["bg", "square"], cfg)
    runs = result.runs
    pre = runs[runs["arm"] == "syn_then_real:gan"]
    assert set(pre["pretrain_share"]) == {0.5, 2.0} and runs.loc[runs["arm"] == "real", "pretrain_share"].isna().all()
    for budget in (2, 4):
        best = pre[pre["budget"] == budget].groupby("pretrain_share")["val_mean_dice"].mean().idxmax()
        assert result.pretrain_shares[str(budget)]["gan"] == best
        row = result.summary[(result.summary["arm"] == "syn_then_real:gan") & (result.summary["budget"] == budget)]
        assert row["pretrain_share"].item() == best and row["seeds"].item() == len(TINY.seeds)


def test_curve_pairs_seeds_chooses_lambda_on_validation_and_reports_gains(real) -> None:
    syn = {"ldm": squares(8, 5)}
    result = learning_curve(real, syn, ["bg", "square"], TINY)
    runs, summary = result.runs, result.summary
    assert sorted(runs["budget"].unique()) == [2, 4]
    # mix ran for every λ; the summary keeps the λ with the best mean validation Dice
    assert set(runs.loc[runs["arm"] == "mix:ldm", "lambda"]) == {0.3, 0.5}
    for budget in (2, 4):
        group = runs[(runs["arm"] == "mix:ldm") & (runs["budget"] == budget)]
        best = group.groupby("lambda")["val_mean_dice"].mean().idxmax()
        assert result.lambdas[str(budget)]["ldm"] == best
    assert set(summary["arm"]) == {"real", "real_aug", "syn_only:ldm", "mix:ldm", "syn_then_real:ldm"}
    real_rows = summary[summary["arm"] == "real"]
    assert (real_rows["gain_mean_dice"] == 0).all()
    row = summary[(summary["arm"] == "mix:ldm") & (summary["budget"] == 2)].iloc[0]
    assert row["ci_low_mean_dice"] <= row["gain_mean_dice"] <= row["ci_high_mean_dice"]
    assert {"mean_jaccard", "dice/square", "gain_mean_jaccard"} <= set(summary.columns)
    assert curve_png(summary)[:4] == b"\x89PNG"


class _NoisyFlips:
    """A per-budget route: flipped copies of the budget's crops with seeded noise (its pairs depend on the seed)."""

    def pairs(self, images, masks, n_pairs, seed):
        rng = np.random.default_rng(seed)
        reps = -(-n_pairs // len(images))
        x = np.repeat(images[:, :, ::-1], reps, axis=0)[:n_pairs].astype(np.int16)
        x = np.clip(x + rng.integers(-20, 21, x.shape), 0, 255).astype(np.uint8)
        return x, np.repeat(masks[:, :, ::-1], reps, axis=0)[:n_pairs], len(images)


def test_workers_give_the_same_curve_as_one_process(real) -> None:
    """Points run in forked workers are seeded alone, so the table cannot depend on how many processes ran it."""
    syn = {"ldm": squares(8, 5), "flips": _NoisyFlips()}
    one = learning_curve(real, syn, ["bg", "square"], TINY, workers=1).runs
    two = learning_curve(real, syn, ["bg", "square"], TINY, workers=2).runs
    per_route = 1 + len(TINY.lambdas) + len(TINY.pretrain_shares)  # syn_only, mix per λ, syn_then_real per share
    assert len(one) == len(TINY.budgets) * len(TINY.seeds) * (2 + 2 * per_route)
    assert (one["route_labels"][one["route"] == "flips"] == one["budget"][one["route"] == "flips"]).all()
    pd.testing.assert_frame_equal(one, two)


def test_a_route_failing_in_a_worker_names_the_route(real) -> None:
    class Short(_NoisyFlips):
        def pairs(self, images, masks, n_pairs, seed):
            x, y, used = super().pairs(images, masks, n_pairs, seed)
            return x[:1], y[:1], used

    with pytest.raises(ValueError, match="route 'short' has 1 pairs"):
        learning_curve(real, {"short": Short()}, ["bg", "square"], TINY, workers=2)


def test_workers_die_on_the_pools_sigterm_even_when_the_parent_ignores_it(real) -> None:
    """Pool.terminate stops idle workers by SIGTERM; inherited SIG_IGN made a failing curve wait forever in CI."""

    class Report(_NoisyFlips):
        def pairs(self, images, masks, n_pairs, seed):
            raise ValueError(f"worker SIGTERM handler: {signal.getsignal(signal.SIGTERM)!r}")

    previous = signal.signal(signal.SIGTERM, signal.SIG_IGN)
    try:
        with pytest.raises(ValueError, match="Handlers.SIG_DFL"):
            learning_curve(real, {"report": Report()}, ["bg", "square"], TINY, workers=2)
    finally:
        signal.signal(signal.SIGTERM, previous)


def test_bad_settings_fail_naming_the_setting(real) -> None:
    with pytest.raises(ValueError, match="label budget N=9 but only 8 labelled training crops"):
        learning_curve(real, {}, ["bg", "square"], CurveConfig(**{**TINY.to_dict(), "budgets": (9,)}))
    with pytest.raises(ValueError, match="route 'gan' has 3 pairs but synthetic_max=6"):
        learning_curve(real, {"gan": squares(3, 1)}, ["bg", "square"], TINY)
    with pytest.raises(ValueError, match="CurveConfig.lambdas"):
        CurveConfig(lambdas=(1.5,))
    with pytest.raises(ValueError, match="CurveConfig.pretrain_shares"):
        CurveConfig(pretrain_shares=(0.0,))
    with pytest.raises(ValueError, match="'real' is the reference"):
        CurveConfig(arms=("mix",))


def _summary(rows: list[tuple[int, str, float, float, float]]) -> pd.DataFrame:
    return pd.DataFrame(
        [
            {"budget": n, "arm": a, "gain_mean_dice": g, "ci_low_mean_dice": lo, "ci_high_mean_dice": hi}
            for n, a, g, lo, hi in rows
        ]
    )


def test_verdict_passes_when_synthetic_helps_at_small_budgets_and_warns_on_losses_at_the_largest() -> None:
    helps = _summary(
        [(4, "real", 0, 0, 0), (4, "mix:ldm", 0.05, 0.01, 0.09), (64, "real", 0, 0, 0), (64, "mix:ldm", 0, -0.02, 0.02)]
    )
    verdict = curve_verdict(helps)
    assert verdict["passed"] and verdict["helping"] == ["mix:ldm@N=4"] and verdict["best_arm_small"] == "mix:ldm"
    within_noise = _summary([(4, "real", 0, 0, 0), (4, "mix:ldm", 0.05, -0.01, 0.09)])
    assert not curve_verdict(within_noise)["passed"]
    aug_only = _summary([(4, "real", 0, 0, 0), (4, "real_aug", 0.1, 0.05, 0.15)])
    assert not curve_verdict(aug_only)["passed"]  # classical augmentation is not a synthetic arm
    loses = _summary(
        [
            (4, "real", 0, 0, 0),
            (4, "mix:gan", 0.05, 0.01, 0.09),
            (64, "real", 0, 0, 0),
            (64, "mix:gan", -0.1, -0.15, -0.05),
        ]
    )
    verdict = curve_verdict(loses)
    assert not verdict["passed"] and verdict["losing_at_max"] == ["mix:gan"] and verdict["gain_at_max"] == -0.1


def test_paired_bootstrap_brackets_the_mean() -> None:
    mean, lo, hi = paired_bootstrap(np.array([0.1, 0.2, 0.3, 0.2, 0.15]), 500)
    assert lo <= mean <= hi and lo > 0
    assert np.isnan(paired_bootstrap(np.array([np.nan]))[0])


def test_hed_jitter_keeps_range_and_changes_stain_only_slightly() -> None:
    x = torch.rand(4, 3, 8, 8) * 1.6 - 0.8
    out = hed_jitter(x, torch.Generator().manual_seed(0))
    assert out.shape == x.shape and out.min() >= -1 and out.max() <= 1
    assert 0 < (out - x).abs().mean() < 0.2
    still = hed_jitter(x, torch.Generator().manual_seed(0), scale=0.0, shift=0.0)
    assert torch.allclose(still, x, atol=1e-3)
