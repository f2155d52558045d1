"""The GAN training run around ``GanTrainer``: batches from the tile store, checkpoints, logging hooks.

Kept apart from the trainer so the step logic stays free of I/O, and apart from Dagster so it runs in a notebook.
A run is resumable: the checkpoint holds the trainer state, and the crop sampler is re-seeded from the step it
resumes at, so an interrupted run continues where it stopped.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from ops.common.file_io import atomic_torch_save, half_state
from ops.common.train_loop import fit_steps
from ops.gan.trainer import GanTrainer
from ops.slides.crops import TileCropSampler


@dataclass(frozen=True)
class LoopConfig:
    """How long to train and how often to look.

    Attributes:
        total_images: Real images to show D in total (StyleGAN's kimg x 1000), across resumes.
        checkpoint_every: Steps between checkpoints (and sample grids / SWD evaluations).
        log_every: Steps between loss logs.
        crop_downsample: Crops of ``resolution * crop_downsample`` tile pixels are averaged down to the GAN size.
        seed: Seeds the crop stream (combined with the step on resume).
    """

    total_images: int
    checkpoint_every: int = 50
    log_every: int = 10
    crop_downsample: int = 1
    seed: int = 0


def fit(
    trainer: GanTrainer,
    tiles: pd.DataFrame,
    loop: LoopConfig,
    checkpoint: str | Path,
    on_log: Callable[[int, dict[str, float]], None] | None = None,
    on_checkpoint: Callable[[GanTrainer], None] | None = None,
) -> GanTrainer:
    """Train until ``total_images`` real images were seen, checkpointing atomically every ``checkpoint_every``.

    The GAN's batches are real crops only, so the loop is the shared ``fit_steps`` fed by a crop sampler seeded
    from the step it resumes at. ``on_log(step, stats)`` gets the step's losses and ``img_per_s``;
    ``on_checkpoint(trainer)`` runs after each checkpoint is written (log pictures and metrics there).
    """
    res, batch = trainer.gan_cfg.resolution, trainer.train_cfg.batch_size
    sampler = TileCropSampler(tiles, res, loop.crop_downsample, seed=loop.seed * 1_000_003 + trainer.step)
    fit_steps(
        trainer,
        lambda: (sampler.batch(batch, trainer.device),),
        loop.total_images,
        checkpoint,
        loop.checkpoint_every,
        loop.log_every,
        on_log=on_log,
        on_checkpoint=on_checkpoint,
        desc="GAN",
    )
    return trainer


def export_pretrained(checkpoint: str | Path, out: str | Path) -> Path:
    """A shippable copy of a training checkpoint: networks in float16, optimiser moments dropped.

    What fine-tuning needs (G, D, G_ema, ADA state, configs) at about a fifth of the size; Adam's moments restart,
    as they do when StyleGAN2-ADA users resume from published networks. Loads with ``GanTrainer.load_checkpoint``.
    """
    from ops.gan.networks import GanConfig
    from ops.gan.trainer import TrainConfig, read_checkpoint

    payload = read_checkpoint(checkpoint)
    fresh = GanTrainer(GanConfig.from_dict(payload["gan_config"]), TrainConfig.from_dict(payload["train_config"]))
    for net in ("G", "D", "G_ema"):
        payload[net] = half_state(payload[net])
    payload["opt_G"], payload["opt_D"] = fresh.opt_G.state_dict(), fresh.opt_D.state_dict()
    return atomic_torch_save(payload, out)
