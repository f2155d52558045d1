"""The shared downstream function on a fabricated export folder: pairs per route, class-map check, headline."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from curve_helpers import squares
from PIL import Image

from ops.evaluation.downstream import export_pairs, require_same_classes, run_downstream
from ops.evaluation.judge import JudgeConfig, judge_labeller, train_judge
from ops.evaluation.learning_curve import CurveConfig
from ops.evaluation.real_split import RealPairs
from ops.export.label_scores import judge_agreement

CLASSES = ["bg", "square"]


@pytest.fixture()
def export(tmp_path):
    rows = []
    for route, seed in (("ldm", 1), ("stylegan2", 2)):
        images, masks = squares(4, seed)
        for i, (img, msk) in enumerate(zip(images, masks, strict=True)):
            Image.fromarray(img).save(tmp_path / f"{route}_{i}_img.png")
            Image.fromarray(msk).save(tmp_path / f"{route}_{i}_mask.png")
            rows.append({"generator": route, "image": f"{route}_{i}_img.png", "mask": f"{route}_{i}_mask.png"})
    pd.DataFrame(rows).to_parquet(tmp_path / "manifest.parquet")
    (tmp_path / "classes.json").write_text(json.dumps([{"id": i, "name": n} for i, n in enumerate(CLASSES)]))
    (tmp_path / "label_scores.json").write_text(json.dumps({"routes": {"ldm": {"fidelity": 0.5}}}))
    return tmp_path


def test_export_pairs_reads_one_route_and_names_a_missing_one(export) -> None:
    images, masks = export_pairs(export, "ldm", 3)
    assert images.shape == (3, 16, 16, 3) and masks.shape == (3, 16, 16) and set(np.unique(masks)) <= {0, 1}
    with pytest.raises(ValueError, match="no pairs of route 'vae'"):
        export_pairs(export, "vae", 3)


def test_class_maps_that_differ_are_refused(export) -> None:
    with pytest.raises(ValueError, match="classes.json: the export's classes .* differ from the real pairs'"):
        require_same_classes(["bg", "square"], ["bg", "nucleus"], export)


def test_run_downstream_gives_the_headline(export) -> None:
    images, masks = squares(10, 0)
    ids = np.array([f"s#{i}" for i in range(4)] + [f"h#{i}" for i in range(6)])
    real = RealPairs(images, masks, ids, np.array(["train"] * 4 + ["val"] * 3 + ["test"] * 3))
    cfg = CurveConfig(budgets=(2,), seeds=(0, 1), lambdas=(0.5,), arms=("real", "mix"), real_passes=1, min_steps=2,
                      base_channels=4, synthetic_max=4, n_boot=100)  # fmt: skip
    result = run_downstream(real, CLASSES, export, cfg)
    headline = result.headline()
    assert result.routes == ["ldm", "stylegan2"] and result.synthetic_pairs == {"ldm": 4, "stylegan2": 4}
    assert headline["fidelity_ldm"] == 0.5 and headline["best_arm_smallest"] in ("mix:ldm", "mix:stylegan2")
    assert headline["ci_low_smallest"] <= headline["gain_smallest"] <= headline["ci_high_smallest"]
    once = run_downstream(real, CLASSES, export, CurveConfig(**{**cfg.to_dict(), "seeds": (0,)}), ["ldm", "ldm"])
    assert once.routes == ["ldm"]  # a route named twice (export + per-budget list) is evaluated and reported once
    with pytest.raises(ValueError, match="differ from the real pairs'"):
        run_downstream(real, ["bg", "other"], export, cfg)


def test_the_judge_trains_on_training_crops_and_reports_held_out_dice(export) -> None:
    images, masks = squares(10, 0)
    ids = np.array([f"s#{i}" for i in range(4)] + [f"h#{i}" for i in range(6)])
    real = RealPairs(images, masks, ids, np.array(["train"] * 4 + ["val"] * 3 + ["test"] * 3))
    model, report = train_judge(real, CLASSES, JudgeConfig(steps=3, base_channels=4))
    assert 0 <= report["mean_dice"] <= 1 and {"dice/bg", "dice/square", "mean_jaccard"} <= set(report)
    syn_images, syn_masks = export_pairs(export, "ldm", 4)
    agreement, _ = judge_agreement(syn_images, syn_masks, judge_labeller(model), len(CLASSES))
    assert agreement.shape == (4,) and ((agreement >= 0) & (agreement <= 1)).all()
    with pytest.raises(ValueError, match="JudgeConfig.steps: expected >= 1"):
        JudgeConfig(steps=0)
