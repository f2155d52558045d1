"""GenSeg under an equal label budget: train the route on the segmenter's own N crops, return generated pairs.

The learning curve (``ops.evaluation.learning_curve``) compares arms that see the same N labelled crops. A generator
trained on more labels than N would smuggle labels into the synthetic arms, so at every budget this function trains
GenSeg from an initialisation that saw no labels (random weights, optionally pre-trained on unlabelled tiles only:
``pretrain_steps``) on just the N crops, with real crops held apart for the architecture's validation loss and the
unlabelled kept tiles for appearance, and paints ``n_pairs`` images for augmented versions of the N masks.

``BUDGET_PRESETS``: ``quick`` keeps one call at a few CPU-minutes (the half-width ``small`` architecture, 64 px);
``demo`` trains the demo architecture longer; ``paper`` is GenSeg's scale for a GPU.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch

from ops.common.config_dict import DictConfig
from ops.common.device import pick_device
from ops.genseg.augment import MaskAugmentConfig, augment_masks, check_masks
from ops.genseg.networks import get_genseg_config, to_uint8
from ops.genseg.trainer import GenSegTrainConfig, GenSegTrainer

Progress = Callable[[int, dict[str, float]], None]


@dataclass(frozen=True)
class BudgetConfig(DictConfig):
    """One per-budget training of the route."""

    preset: str = "demo"  # architecture preset (ops.genseg.networks.GENSEG_PRESETS); must match the crops' size
    steps: int = 300  # MLO iterations (pre-training steps included)
    train: GenSegTrainConfig = field(default_factory=GenSegTrainConfig)
    augment: MaskAugmentConfig = field(default_factory=MaskAugmentConfig)
    sample_batch: int = 32  # masks painted together when sampling
    device: str = "auto"  # 'auto' | 'cpu' | 'cuda[:i]'

    def __post_init__(self) -> None:  # from_dict gives plain dicts for the nested configs
        if isinstance(self.train, dict):
            object.__setattr__(self, "train", GenSegTrainConfig.from_dict(self.train))
        if isinstance(self.augment, dict):
            object.__setattr__(self, "augment", MaskAugmentConfig.from_dict(self.augment))
        if self.steps < 1 or self.sample_batch < 1:
            raise ValueError(
                f"BudgetConfig: steps and sample_batch must be >= 1, received {self.steps}, {self.sample_batch}"
            )


BUDGET_PRESETS: dict[str, BudgetConfig] = {
    # A few CPU-minutes per call (one torch thread): 100 MLO steps of batch 8 on the small architecture, measured
    # at 3.1 s per step with stage III (1.5 s without) on the shared 2-core machine.
    "quick": BudgetConfig(preset="small", steps=100),
    "demo": BudgetConfig(steps=600),
    "paper": BudgetConfig(preset="paper", steps=20_000, train=GenSegTrainConfig(batch_size=16), device="cuda"),
}


def budget_config(name_or_cfg: str | BudgetConfig, **train_overrides: object) -> BudgetConfig:
    """A preset by name (or a config as is), with ``GenSegTrainConfig`` fields overridden (``search=False``, …)."""
    if isinstance(name_or_cfg, str):
        if name_or_cfg not in BUDGET_PRESETS:
            raise ValueError(f"unknown GenSeg budget preset {name_or_cfg!r}; known: {sorted(BUDGET_PRESETS)}")
        name_or_cfg = BUDGET_PRESETS[name_or_cfg]
    if train_overrides:
        name_or_cfg = dataclasses.replace(name_or_cfg, train=dataclasses.replace(name_or_cfg.train, **train_overrides))
    return name_or_cfg


def _check_images(images: np.ndarray, r: int, name: str) -> np.ndarray:
    images = np.asarray(images)
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[1:] != (r, r, 3) or len(images) == 0:
        raise ValueError(f"{name}: expected uint8 [N >= 1, {r}, {r}, 3], received {images.dtype} {images.shape}")
    return images


def _to_x(images: np.ndarray, device: torch.device) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(images)).to(device).permute(0, 3, 1, 2).float().div(127.5).sub(1.0)


def _cycle(n: int, batch: int, rng: np.random.Generator):
    """Endless index batches: shuffled passes over ``n`` items (every item seen equally often)."""
    order = np.empty(0, np.int64)
    while True:
        while len(order) < batch:
            order = np.concatenate([order, rng.permutation(n)])
        yield order[:batch]
        order = order[batch:]


def train_route(
    images: np.ndarray,
    masks: np.ndarray,
    val_images: np.ndarray,
    val_masks: np.ndarray,
    unlabelled: np.ndarray | None,
    n_classes: int,
    seed: int,
    cfg: BudgetConfig,
    progress: Progress | None = None,
) -> GenSegTrainer:
    """Train GenSeg from random weights on the given crops (see :func:`budget_pairs`); returns the trainer."""
    arch = get_genseg_config(cfg.preset, n_classes)
    r = arch.resolution
    images, val_images = _check_images(images, r, "images"), _check_images(val_images, r, "val_images")
    masks, val_masks = check_masks(masks, n_classes, "masks"), check_masks(val_masks, n_classes, "val_masks")
    for a, b, name in ((images, masks, "masks"), (val_images, val_masks, "val_masks")):
        if b.shape != a.shape[:3]:
            raise ValueError(f"{name}: expected one mask per image, shape {a.shape[:3]}, received {b.shape}")
    train_cfg = dataclasses.replace(cfg.train, seed=seed)
    if unlabelled is None and (train_cfg.unlabelled_disc or train_cfg.pretrain_steps):
        train_cfg = dataclasses.replace(train_cfg, unlabelled_disc=False, pretrain_steps=0)
    elif unlabelled is not None:
        unlabelled = _check_images(unlabelled, r, "unlabelled")
    device = pick_device(cfg.device)
    trainer = GenSegTrainer(arch, train_cfg, cfg.augment, device)
    rng = np.random.default_rng(seed + 7_919)
    b = train_cfg.batch_size
    x_all, y_all = _to_x(images, device), torch.from_numpy(masks.astype(np.int64)).to(device)
    vx_all, vy_all = _to_x(val_images, device), torch.from_numpy(val_masks.astype(np.int64)).to(device)
    labelled, held = _cycle(len(images), b, rng), _cycle(len(val_images), b, rng)
    tiles = _cycle(len(unlabelled), b, rng) if unlabelled is not None else None
    while trainer.step < cfg.steps:
        i, j = next(labelled), next(held)
        unl = _to_x(unlabelled[next(tiles)], device) if tiles is not None else None
        stats = trainer.train_step(x_all[i], y_all[i], vx_all[j], vy_all[j], unl)
        if progress is not None:
            progress(trainer.step, stats)
    return trainer


@torch.no_grad()
def paint_pairs(
    trainer: GenSegTrainer, masks: np.ndarray, n_pairs: int, seed: int, batch: int = 32
) -> tuple[np.ndarray, np.ndarray]:
    """``n_pairs`` augmented versions of ``masks`` and the trained generator's images of them (uint8)."""
    rng = np.random.default_rng(seed + 104_729)
    new_masks = augment_masks(masks, n_pairs, rng, trainer.augment_cfg, trainer.cfg.n_classes)
    g = trainer.generator.eval()
    noise_gen = torch.Generator().manual_seed(seed + 15_485_863)
    r, nz = trainer.cfg.resolution, trainer.cfg.noise_channels
    images = np.empty((n_pairs, r, r, 3), np.uint8)
    for start in range(0, n_pairs, batch):
        m = torch.from_numpy(new_masks[start : start + batch]).long().to(trainer.device)
        noise = torch.randn((len(m), nz, r, r), generator=noise_gen).to(trainer.device) if nz else None
        x = g.paint(m, noise)
        images[start : start + batch] = to_uint8(x)
    return images, new_masks


def budget_pairs(
    images: np.ndarray,  # uint8 [N, R, R, 3] the budget's labelled crops
    masks: np.ndarray,  # uint8 [N, R, R] class ids, 255 = unannotated (ignored)
    val_images: np.ndarray,  # uint8 [V, R, R, 3] real labelled crops held apart from the N (never test tiles)
    val_masks: np.ndarray,  # uint8 [V, R, R]
    unlabelled: np.ndarray | None,  # uint8 [U, R, R, 3] kept tissue crops (appearance), or None
    n_pairs: int,  # generated pairs to return
    n_classes: int,  # K of the class map
    seed: int,  # seeds weights, batches, augmentation and noise
    cfg: BudgetConfig | str = "quick",  # a BudgetConfig or a preset name (BUDGET_PRESETS)
) -> tuple[np.ndarray, np.ndarray]:
    """GenSeg trained on one label budget only; ``n_pairs`` generated pairs (images uint8 ``[M, R, R, 3]``, masks
    uint8 ``[M, R, R]``, fully labelled) from augmented versions of the budget's masks.

    Raises:
        ValueError: shapes or dtypes that do not fit the preset's resolution, class ids outside ``0..K-1`` (and
            not 255), ``n_pairs < 1``, or an unknown preset.
    """
    if n_pairs < 1:
        raise ValueError(f"n_pairs: expected >= 1, received {n_pairs}")
    cfg = budget_config(cfg)
    trainer = train_route(images, masks, val_images, val_masks, unlabelled, n_classes, seed, cfg)
    return paint_pairs(trainer, masks, n_pairs, seed, cfg.sample_batch)
