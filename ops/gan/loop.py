"""The GAN training run around ``GanTrainer``: batches from the tile store, checkpoints, logging hooks, pictures.

Kept apart from the trainer so the step logic stays free of I/O, and apart from Dagster so it runs in a notebook.
A run is resumable: the checkpoint holds the trainer state, and the crop sampler is re-seeded from the step it
resumes at, so an interrupted run continues where it stopped.
"""

from __future__ import annotations

import io
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from PIL import Image

from ops.common.file_io import atomic_torch_save, half_state
from ops.common.train_loop import fit_steps
from ops.gan.metrics import SwdResult, sliced_wasserstein_distance
from ops.gan.networks import Generator, images_to_uint8
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
    checkpoint_every: int = 100
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


@torch.no_grad()
def generate(
    G: Generator, seeds: np.ndarray, psi: float, device: torch.device | str = "cpu", batch: int = 1
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Images for per-image seeds, reproducibly: image i depends on ``seeds[i]`` only.

    ``batch=1`` (the default) makes every image bit-for-bit reproducible on its own: batched convolutions may
    round differently from single-image ones (seen: 1 pixel value off by 1 in 12k). Larger batches are for
    throughput where exact regeneration does not matter (evaluation sets).

    Returns:
        (z ``[N, z_dim]`` float32, w ``[N, num_ws, w_dim]`` float32, images uint8 ``[N, R, R, 3]``).
    """
    zs, ws, imgs = [], [], []
    for i in range(0, len(seeds), batch):
        z = torch.stack(
            [torch.randn(G.cfg.z_dim, generator=torch.Generator().manual_seed(int(s))) for s in seeds[i : i + batch]]
        ).to(device)
        w = G.mapping(z, psi=psi)
        imgs.append(images_to_uint8(G.synthesis(w, noise_mode="const")))
        zs.append(z.cpu().numpy())
        ws.append(w.cpu().numpy())
    return np.concatenate(zs), np.concatenate(ws), np.concatenate(imgs)


def image_grid_png(images: np.ndarray, columns: int = 8, labels: bool = False, scale: int = 1) -> bytes:
    """A contact sheet of uint8 ``[N, R, R, 3]`` images as PNG (index labels for choosing what to annotate)."""
    n, r = len(images), images.shape[1]
    rows = -(-n // columns)
    pad = 2
    sheet = np.full((rows * (r + pad) + pad, columns * (r + pad) + pad, 3), 255, np.uint8)
    for i, img in enumerate(images):
        y, x = pad + (i // columns) * (r + pad), pad + (i % columns) * (r + pad)
        sheet[y : y + r, x : x + r] = img
    pic = Image.fromarray(sheet)
    if scale > 1:
        pic = pic.resize((pic.width * scale, pic.height * scale), Image.Resampling.NEAREST)
    if labels:
        from PIL import ImageDraw

        draw = ImageDraw.Draw(pic)
        for i in range(n):
            y, x = pad + (i // columns) * (r + pad), pad + (i % columns) * (r + pad)
            draw.text((x * scale + 2, y * scale + 1), str(i), fill=(0, 0, 0))
    buf = io.BytesIO()
    pic.save(buf, format="PNG")
    return buf.getvalue()


def swd_against(reference: np.ndarray, images: np.ndarray, seed: int = 0) -> SwdResult:
    """SWD between real crops and generated images, both uint8 ``[N, R, R, 3]`` (equal counts)."""
    n = min(len(reference), len(images))
    return sliced_wasserstein_distance(reference[:n], images[:n], seed=seed)


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
