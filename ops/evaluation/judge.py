"""The label judge: a segmenter trained on the real annotated training crops that scores exported pairs.

With expert data nothing can label a synthetic image except a model of the expert's labels. The judge is that model,
trained the way the strongest real-only baseline is (all labelled training crops, flips/rotations and HED jitter),
and scored on the held-out real crops, so its agreement with an exported mask has a scale: a judge with held-out Dice
0.7 can confirm a mask up to about 0.7, and a route whose agreement approaches it is as consistent as real data.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from ops.common.config_dict import DictConfig
from ops.evaluation.learning_curve import CurveConfig, score, train_arm
from ops.evaluation.real_split import RealPairs
from ops.evaluation.segmenter import Segmenter, predict_segmenter


@dataclass(frozen=True)
class JudgeConfig(DictConfig):
    """How the judge trains (the learning curve's segmenter, loss and normalisation)."""

    steps: int = 600  # optimiser steps over all labelled training crops
    batch: int = 8  # crops per step
    base_channels: int = 16
    lr: float = 1e-3
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("steps", "batch", "base_channels"):
            if getattr(self, name) < 1:
                raise ValueError(f"JudgeConfig.{name}: expected >= 1, received {getattr(self, name)}")


def train_judge(real: RealPairs, class_names: Sequence[str], cfg: JudgeConfig) -> tuple[Segmenter, dict[str, float]]:
    """Train on every ``train`` crop with classical augmentation; score on the held-out ``val`` + ``test`` crops.

    Returns:
        The model (eval mode) and its held-out report (``mean_dice``, ``mean_jaccard``, ``dice/<class>``).
    """
    images, masks, _ = real.part("train")
    held = real.parts != "train"
    if len(images) == 0 or not held.any():
        raise ValueError("train_judge: real pairs need training crops and held-out crops; rematerialize them")
    curve = CurveConfig(
        real_passes=1, min_steps=cfg.steps, batch_real=cfg.batch, base_channels=cfg.base_channels, lr=cfg.lr
    )
    model = train_arm("real_aug", (images, masks), None, curve, len(class_names), cfg.seed).model
    return model, score(model, real.images[held], real.masks[held], class_names)


def judge_labeller(model: Segmenter):
    """The judge as a labeller for ``ops.export.label_scores.judge_agreement``."""

    def label(images: np.ndarray) -> np.ndarray:
        return predict_segmenter(model, images)

    return label
