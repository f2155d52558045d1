"""GenSeg's networks: a mask-to-image U-Net built from searchable cells, and PatchGAN discriminators.

Built bottom-up (NVlabs style): candidate operations → :class:`SearchableCell` → :class:`SearchableGenerator`;
then :class:`PatchDiscriminator`; then save / load.

**Searchable cells** (GenSeg Fig. 1c, DARTS's continuous relaxation). A cell holds every candidate operation
``o_i`` (3×3 conv, 5×5 conv, dilated 3×3 conv, identity) and outputs ``Σ_i softmax(α)_i · o_i(x)``. The ``α`` of all
cells are the architecture parameters **A**, kept apart from the weights **G** (:meth:`SearchableGenerator.
arch_parameters` vs :meth:`~SearchableGenerator.weight_parameters`) because the two are trained by different losses:
G by the GAN loss, A by the segmenter's validation loss (``ops.genseg.trainer``). Every cell keeps its channel count,
so identity is a true skip; channel changes happen in fixed (non-searched) down / up layers between cells.
``α`` starts at zero, i.e. exactly uniform weights, so ``search=False`` is a plain pix2pix-style U-Net with a fixed,
uniform mix of the candidates.

**Generator input**: the one-hot mask ``[B, K, R, R]`` (unannotated pixels are the zero vector) concatenated with a
noise map ``[B, noise_channels, R, R]``, so one mask can give several images.

Layouts: masks ``[B, R, R]`` int64 class ids (255 = unannotated), images float ``[B, 3, R, R]`` in [-1, 1].
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ops.common.config_dict import DictConfig
from ops.common.device import pick_device
from ops.common.file_io import CheckpointError, atomic_torch_save, read_torch_file

CANDIDATE_OPS = ("conv3", "conv5", "dil3", "skip")
GENERATOR_FORMAT = "histofactory.genseg-generator/1"
IGNORE_INDEX = 255

# ----------------------------------------------------------------------------------------------------------------
# Configuration.


@dataclass(frozen=True)
class GenSegConfig(DictConfig):
    """Architecture of the generator and discriminators. Level ``i`` works at ``R / 2**i`` pixels."""

    n_classes: int = 6  # K mask classes (ids 0..K-1)
    resolution: int = 64  # image and mask edge in pixels
    base_channels: int = 16  # generator channels at full resolution, doubled per level
    channel_max: int = 64  # cap on generator channels
    depth: int = 3  # 2x down-samplings of the U-Net; resolution must be divisible by 2**depth
    noise_channels: int = 1  # per-pixel noise maps concatenated to the one-hot mask; 0 = deterministic generator
    ops: tuple[str, ...] = CANDIDATE_OPS  # candidate operations of every cell (see make_op)
    disc_channels: int = 32  # PatchGAN channels of the first layer, doubled per layer (capped at 8x)
    disc_layers: int = 2  # PatchGAN stride-2 layers (pix2pix: 3 for a 70-px receptive field at 256 px)

    def __post_init__(self) -> None:
        object.__setattr__(self, "ops", tuple(self.ops))  # JSON / YAML give lists
        for name in ("n_classes", "resolution", "base_channels", "channel_max", "disc_channels", "disc_layers"):
            value = getattr(self, name)
            if not (isinstance(value, int) and value >= 1):
                raise ValueError(f"GenSegConfig.{name}: expected a positive integer, received {value!r}")
        if self.n_classes < 2:
            raise ValueError(f"GenSegConfig.n_classes: expected >= 2 classes, received {self.n_classes}")
        if not (isinstance(self.depth, int) and self.depth >= 1) or self.resolution % 2**self.depth:
            raise ValueError(
                f"GenSegConfig.depth: expected an integer >= 1 with resolution divisible by 2**depth, received "
                f"depth={self.depth!r}, resolution={self.resolution}"
            )
        if self.noise_channels < 0:
            raise ValueError(f"GenSegConfig.noise_channels: expected >= 0, received {self.noise_channels}")
        unknown = [o for o in self.ops if o not in CANDIDATE_OPS]
        if unknown or not self.ops or len(set(self.ops)) != len(self.ops):
            raise ValueError(
                f"GenSegConfig.ops: expected distinct names from {CANDIDATE_OPS}, received {list(self.ops)}"
            )

    def channels(self, level: int) -> int:
        """Generator channels at ``level`` (0 = full resolution)."""
        return min(self.base_channels * 2**level, self.channel_max)


# Presets: the demo trains in CPU minutes; paper is GenSeg's scale (512 px, the paper preset's mask bank) for a GPU.
GENSEG_PRESETS: dict[str, dict[str, Any]] = {
    "demo": dict(resolution=64, base_channels=16, channel_max=64, depth=3, disc_channels=32, disc_layers=2),
    # Half the demo's width (a quarter of its FLOPs): what a per-budget training in the learning curve can afford.
    "small": dict(resolution=64, base_channels=8, channel_max=32, depth=3, disc_channels=16, disc_layers=2),
    "paper": dict(resolution=512, base_channels=32, channel_max=256, depth=6, disc_channels=64, disc_layers=3),
}


def get_genseg_config(preset: str, n_classes: int, **overrides: Any) -> GenSegConfig:
    """A config from a preset name; an unknown name raises an error listing the presets."""
    if preset not in GENSEG_PRESETS:
        raise ValueError(f"unknown GenSeg preset {preset!r}; known presets: {sorted(GENSEG_PRESETS)}")
    return GenSegConfig(n_classes=n_classes, **{**GENSEG_PRESETS[preset], **overrides})


# ----------------------------------------------------------------------------------------------------------------
# Candidate operations and the searchable cell.


def make_op(name: str, channels: int) -> nn.Module:
    """One candidate operation, ``[B, C, h, w] → [B, C, h, w]``; convs are DARTS's ReLU-conv-norm triplets."""
    if name == "skip":
        return nn.Identity()
    kernel, dilation = {"conv3": (3, 1), "conv5": (5, 1), "dil3": (3, 2)}[name]
    return nn.Sequential(
        nn.LeakyReLU(0.2),
        nn.Conv2d(channels, channels, kernel, padding=dilation * (kernel // 2), dilation=dilation),
        nn.InstanceNorm2d(channels, affine=True),  # per-image statistics: no running buffers to unroll through
    )


class SearchableCell(nn.Module):
    """``Σ_i softmax(α)_i · o_i(x)`` over the candidate operations; ``α`` is this cell's share of A."""

    def __init__(
        self,
        channels: int,  # input = output channels
        ops: tuple[str, ...] = CANDIDATE_OPS,  # candidate names (see make_op)
    ) -> None:
        super().__init__()
        self.op_names = tuple(ops)
        self.ops = nn.ModuleList(make_op(name, channels) for name in ops)
        self.alpha = nn.Parameter(torch.zeros(len(ops)))  # zeros = uniform mix (the search=False architecture)

    def weights(self) -> torch.Tensor:
        """The mixing weights ``softmax(α)``, ``[n_ops]``, summing to 1."""
        return torch.softmax(self.alpha, dim=0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = self.weights()
        out = w[0] * self.ops[0](x)
        for i in range(1, len(self.ops)):
            out = out + w[i] * self.ops[i](x)
        return out


# ----------------------------------------------------------------------------------------------------------------
# The generator.


def mask_onehot(masks: torch.Tensor, n_classes: int) -> torch.Tensor:
    """``[B, R, R]`` class ids → ``[B, K, R, R]`` float one-hot; 255 (unannotated) → the zero vector.

    Raises:
        ValueError: a class id outside ``0..K-1`` and not 255 — the masks were made for another class map.
    """
    assert masks.ndim == 3, f"masks: expected [B, R, R], received {tuple(masks.shape)}"
    valid = masks != IGNORE_INDEX
    ids = masks[valid]
    if ids.numel() and (int(ids.max()) >= n_classes or int(ids.min()) < 0):
        found = sorted(torch.unique(ids).tolist())
        raise ValueError(
            f"masks: class ids {found} do not fit a generator for n_classes={n_classes} (ids 0..{n_classes - 1}, "
            f"{IGNORE_INDEX} = unannotated). Fix: use the class map the generator was trained with"
        )
    onehot = F.one_hot(torch.where(valid, masks, 0).long(), n_classes).permute(0, 3, 1, 2).float()
    return onehot * valid[:, None].float()


class SearchableGenerator(nn.Module):
    """One-hot mask + noise ``[B, K + noise, R, R]`` → image ``[B, 3, R, R]`` in [-1, 1] (tanh).

    Encoder: stem conv, then per level a searchable cell and a fixed stride-2 4×4 conv (channels up). Bottleneck:
    a searchable cell. Decoder: per level a fixed bilinear 2× up + 3×3 conv, concatenation with the encoder's skip,
    a 1×1 fuse conv and a searchable cell. Head: 3×3 conv to RGB.
    """

    def __init__(self, cfg: GenSegConfig) -> None:
        super().__init__()
        self.cfg = cfg
        c, d = cfg.channels, cfg.depth
        self.stem = nn.Conv2d(cfg.n_classes + cfg.noise_channels, c(0), 3, padding=1)
        self.enc = nn.ModuleList(SearchableCell(c(i), cfg.ops) for i in range(d))
        self.down = nn.ModuleList(
            nn.Sequential(
                nn.Conv2d(c(i), c(i + 1), 4, stride=2, padding=1),
                nn.InstanceNorm2d(c(i + 1), affine=True),
                nn.LeakyReLU(0.2),
            )
            for i in range(d)
        )
        self.mid = SearchableCell(c(d), cfg.ops)
        self.up = nn.ModuleList(
            nn.Sequential(
                nn.Upsample(scale_factor=2, mode="bilinear", align_corners=False),
                nn.Conv2d(c(i + 1), c(i), 3, padding=1),
                nn.InstanceNorm2d(c(i), affine=True),
                nn.ReLU(),
            )
            for i in range(d)
        )
        self.fuse = nn.ModuleList(nn.Conv2d(2 * c(i), c(i), 1) for i in range(d))
        self.dec = nn.ModuleList(SearchableCell(c(i), cfg.ops) for i in range(d))
        self.head = nn.Sequential(nn.ReLU(), nn.Conv2d(c(0), 3, 3, padding=1), nn.Tanh())

    def cells(self) -> dict[str, SearchableCell]:
        """Every searchable cell by name (``enc0``… ``mid`` … ``dec0``), in forward order."""
        d = self.cfg.depth
        return {
            **{f"enc{i}": self.enc[i] for i in range(d)},
            "mid": self.mid,
            **{f"dec{i}": self.dec[i] for i in reversed(range(d))},
        }

    def arch_parameters(self) -> list[nn.Parameter]:
        """A: the ``α`` of every cell (trained on the segmenter's validation loss)."""
        return [cell.alpha for cell in self.cells().values()]

    def weight_parameters(self) -> list[nn.Parameter]:
        """G: every parameter except A (trained on the GAN loss)."""
        arch = {id(p) for p in self.arch_parameters()}
        return [p for p in self.parameters() if id(p) not in arch]

    def arch_weights(self) -> dict[str, dict[str, float]]:
        """``softmax(α)`` of every cell by operation name, for logging the search over time."""
        with torch.no_grad():
            return {
                name: dict(zip(cell.op_names, cell.weights().tolist(), strict=True))
                for name, cell in self.cells().items()
            }

    def forward(self, cond: torch.Tensor, noise: torch.Tensor | None = None) -> torch.Tensor:
        cfg = self.cfg
        r, k, nz = cfg.resolution, cfg.n_classes, cfg.noise_channels
        assert cond.ndim == 4 and cond.shape[1] == k and cond.shape[2] % 2**cfg.depth == 0, (
            f"cond: expected [B, {k}, H, W] one-hot masks with H, W divisible by {2**cfg.depth}, received "
            f"{tuple(cond.shape)} (resolution {r})"
        )
        if nz:
            assert noise is not None and noise.shape == (cond.shape[0], nz, *cond.shape[2:]), (
                f"noise: expected [{cond.shape[0]}, {nz}, {cond.shape[2]}, {cond.shape[3]}], received "
                f"{None if noise is None else tuple(noise.shape)}"
            )
            cond = torch.cat([cond, noise], dim=1)
        x = self.stem(cond)  # [B, c0, R, R]
        skips = []
        for i in range(cfg.depth):
            x = self.enc[i](x)
            skips.append(x)
            x = self.down[i](x)  # [B, c(i+1), R/2^(i+1), ...]
        x = self.mid(x)
        for i in reversed(range(cfg.depth)):
            x = self.fuse[i](torch.cat([self.up[i](x), skips[i]], dim=1))
            x = self.dec[i](x)
        return self.head(x)

    def paint(self, masks: torch.Tensor, noise: torch.Tensor | None = None) -> torch.Tensor:
        """Images ``[B, 3, H, W]`` for class-id masks ``[B, H, W]`` (the spatial size of the masks)."""
        return self(mask_onehot(masks, self.cfg.n_classes).to(self.stem.weight.dtype), noise)


def noise_for_seeds(seeds: np.ndarray, cfg: GenSegConfig, size: int | None = None) -> torch.Tensor | None:
    """``[len(seeds), noise_channels, size, size]`` standard normal noise, one generator per seed (reproducible)."""
    if not cfg.noise_channels:
        return None
    size = size or cfg.resolution
    return torch.stack(
        [
            torch.randn((cfg.noise_channels, size, size), generator=torch.Generator().manual_seed(int(s)))
            for s in np.asarray(seeds).tolist()
        ]
    )


def to_uint8(x: torch.Tensor) -> np.ndarray:
    """Generator output ``[B, 3, R, R]`` in [-1, 1] → uint8 ``[B, R, R, 3]`` (the tile-store layout)."""
    return x.detach().permute(0, 2, 3, 1).add(1).mul(127.5).round().clamp(0, 255).byte().cpu().numpy()


# ----------------------------------------------------------------------------------------------------------------
# Discriminator.


class PatchDiscriminator(nn.Module):
    """pix2pix's PatchGAN: ``[B, C, R, R]`` → ``[B, 1, r, r]`` real/fake logits, one per overlapping patch.

    Conditional on the mask when ``in_channels = K + 3`` (one-hot mask and image concatenated); unconditional on
    images alone when ``in_channels = 3`` (the branch that learns appearance from unlabelled tiles).
    """

    def __init__(
        self,
        in_channels: int,  # K + 3 (mask, image) or 3 (image)
        channels: int = 32,  # first layer's channels, doubled per layer up to 8x
        layers: int = 2,  # stride-2 layers
    ) -> None:
        super().__init__()
        seq: list[nn.Module] = [nn.Conv2d(in_channels, channels, 4, stride=2, padding=1), nn.LeakyReLU(0.2)]
        ch = channels
        for i in range(1, layers + 1):
            nxt = channels * min(2**i, 8)
            seq += [
                nn.Conv2d(ch, nxt, 4, stride=2 if i < layers else 1, padding=1),
                nn.InstanceNorm2d(nxt, affine=True),
                nn.LeakyReLU(0.2),
            ]
            ch = nxt
        seq.append(nn.Conv2d(ch, 1, 4, stride=1, padding=1))
        self.net = nn.Sequential(*seq)
        self.in_channels = in_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        assert x.ndim == 4 and x.shape[1] == self.in_channels, (
            f"x: expected [B, {self.in_channels}, H, W], received {tuple(x.shape)}"
        )
        return self.net(x)


# ----------------------------------------------------------------------------------------------------------------
# Save / load of the generator (config + state dict; A is in the state dict as the cells' alpha).


def save_generator(
    path: str | os.PathLike[str], model: SearchableGenerator, meta: dict[str, Any] | None = None
) -> Path:
    """Write config, weights (A included) and optional metadata atomically; read with ``weights_only=True``."""
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    payload = {"format": GENERATOR_FORMAT, "config": model.cfg.to_dict(), "state_dict": state, "meta": meta or {}}
    return atomic_torch_save(payload, path)


def _read_generator(path: str | os.PathLike[str]) -> dict[str, Any]:
    return read_torch_file(
        path, (GENERATOR_FORMAT,), ("config", "state_dict", "meta"), "GenSeg generator", "retrain genseg_model"
    )


def generator_meta(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The metadata saved beside the weights (the mask augmentation the generator was trained with, its step)."""
    return _read_generator(path)["meta"]


def load_generator(path: str | os.PathLike[str], device: str | torch.device = "cpu") -> SearchableGenerator:
    """The generator written by :func:`save_generator`, in eval mode without gradients."""
    payload = _read_generator(path)
    model = SearchableGenerator(GenSegConfig.from_dict(payload["config"]))
    try:
        model.load_state_dict(payload["state_dict"])
    except RuntimeError as err:
        raise CheckpointError(f"GenSeg generator {path}: weights do not fit its config ({err}); retrain it") from err
    device = device if isinstance(device, torch.device) else pick_device(device)
    return model.to(device).eval().requires_grad_(False)
