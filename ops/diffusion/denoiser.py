"""Mask-conditioned latent diffusion (DISC / GenSeg): a diffusers UNet denoises autoencoder latents given a mask.

The model learns ``p(image | mask)``, so every sample arrives with its label: draw a mask (from the mask bank, with
the class balance a user asks for) and generate the tissue that fits it. Two ways to feed the mask, both kept:

- ``concat`` — the mask's one-hot class fractions, area-downsampled to the latent grid, are concatenated to the
  noisy latent (``UNet2DModel`` with ``latent_channels + n_classes`` input channels). Cheap and spatially exact.
- ``cross_attention`` — a small conv mask encoder turns the full-resolution one-hot mask into a grid of tokens that
  the UNet attends to (``UNet2DConditionModel``), as in DISC. ``bench/ldm.py`` decided the default: on CPU at the
  demo size it is 1.6x slower per step, and after the same 180 s of training its samples did not yet follow their
  masks (mask agreement 0.98x chance vs 1.34x for ``concat``), so ``concat`` is the default; the paper preset (GPU,
  long training) keeps DISC's cross-attention.

Classifier-free guidance: during training a share ``cond_dropout`` of the masks is replaced by the all-zero mask
(no pixel belongs to any class; real masks sum to 1 per labelled pixel), which becomes the unconditional model. The
same null condition is how unlabelled tissue tiles are trained (DiffInfinite's recipe): their masks are all 255
(``unlabelled_masks``), so they teach the model what tissue looks like without claiming any label.

Training follows diffusers' examples: DDPM forward process with T=1000 steps, epsilon prediction, MSE loss.
Checkpoints are plain dicts of configs, state dicts, optimiser state, counters and RNG state, written atomically
and read with ``weights_only=True``; resuming continues as if training had not stopped (given the same batches).

Tensor layouts: latents ``[B, C, h, w]`` (unit variance, see ``ops.diffusion.autoencoder.fit_latent_scale``), masks
``[B, R, R]`` int64 class ids with ``IGNORE_INDEX`` (255) for unlabelled pixels, conditions ``[B, K, R, R]`` float.
"""

from __future__ import annotations

import dataclasses
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from diffusers import DDPMScheduler, UNet2DConditionModel, UNet2DModel
from diffusers.training_utils import EMAModel
from torch import nn

from ops.common.config_dict import DictConfig
from ops.common.device import pick_device
from ops.common.file_io import CheckpointError, atomic_torch_save, half_state, read_torch_file
from ops.common.provenance import read_provenance, write_provenance

CHECKPOINT_FORMAT = "histofactory.ldm/1"
CONDITIONINGS = ("concat", "cross_attention")


# ----------------------------------------------------------------------------------------------------------
# Configuration.


@dataclass(frozen=True)
class LdmConfig(DictConfig):
    """Architecture of the denoiser and its noise schedule."""

    n_classes: int = 6  # mask classes K (class ids 0..K-1)
    resolution: int = 64  # image (and mask) edge in pixels
    latent_size: int = 16  # latent edge = resolution / autoencoder factor (DISC: factor 4)
    latent_channels: int = 4  # autoencoder latent channels
    conditioning: str = "concat"  # "concat" or "cross_attention" (see module docstring)
    block_out_channels: tuple[int, ...] = (64, 128)  # UNet width per resolution level, finest first
    attention_levels: tuple[bool, ...] = (False, True)  # self-/cross-attention at each level
    layers_per_block: int = 1  # resnet layers per UNet block
    norm_num_groups: int = 16  # group-norm groups (must divide every width)
    attention_head_dim: int = 8  # channels per attention head
    mask_embed_dim: int = 64  # cross_attention: token width of the mask encoder
    mask_token_size: int = 8  # cross_attention: the mask encoder's output grid edge (tokens = size^2)
    num_train_timesteps: int = 1000  # DDPM T
    beta_schedule: str = "scaled_linear"  # LDM's schedule (betas 0.00085 .. 0.012)
    beta_start: float = 0.00085
    beta_end: float = 0.012
    cond_dropout: float = 0.1  # share of training masks replaced by the null mask (classifier-free guidance); 0 = off

    def __post_init__(self) -> None:
        for name in ("block_out_channels", "attention_levels"):  # JSON / YAML give lists; keep it hashable
            object.__setattr__(self, name, tuple(getattr(self, name)))
        if self.conditioning not in CONDITIONINGS:
            raise ValueError(f"LdmConfig.conditioning: unknown {self.conditioning!r}; expected one of {CONDITIONINGS}")
        if len(self.attention_levels) != len(self.block_out_channels):
            raise ValueError(
                f"LdmConfig.attention_levels: expected {len(self.block_out_channels)} flags (one per "
                f"block_out_channels entry), received {self.attention_levels}"
            )
        if self.conditioning == "cross_attention" and not any(self.attention_levels):
            raise ValueError("LdmConfig.attention_levels: cross_attention needs attention at one level at least")
        bad = [c for c in self.block_out_channels if c % self.norm_num_groups]
        if bad:
            raise ValueError(
                f"LdmConfig.block_out_channels {bad} are not divisible by norm_num_groups={self.norm_num_groups}"
            )
        if self.latent_size % 2 ** (len(self.block_out_channels) - 1):
            raise ValueError(
                f"LdmConfig.latent_size {self.latent_size} is not divisible by the UNet's "
                f"{2 ** (len(self.block_out_channels) - 1)}x downsampling"
            )
        if self.resolution % self.mask_token_size or self.resolution % self.latent_size:
            raise ValueError(
                f"LdmConfig.resolution {self.resolution} must be a multiple of latent_size "
                f"{self.latent_size} and mask_token_size {self.mask_token_size}"
            )
        if not 0 <= self.cond_dropout < 1:
            raise ValueError(f"LdmConfig.cond_dropout: expected [0, 1), received {self.cond_dropout}")
        if self.n_classes < 2:
            raise ValueError(f"LdmConfig.n_classes: expected >= 2, received {self.n_classes}")

    def scheduler(self) -> DDPMScheduler:
        """The DDPM training schedule; DDIM sampling is built from its config (``ops.diffusion.samplers``)."""
        return DDPMScheduler(
            num_train_timesteps=self.num_train_timesteps,
            beta_schedule=self.beta_schedule,
            beta_start=self.beta_start,
            beta_end=self.beta_end,
            prediction_type="epsilon",
            clip_sample=False,
        )


# Presets: the demo trains in minutes on 2 CPU cores; "256" and "paper" (512-px images, DISC's f=4 latents of
# 128^2) are real sizes for a GPU. The latent size follows from the autoencoder preset of the same name.
LDM_PRESETS: dict[str, dict[str, Any]] = {
    "demo": dict(resolution=64, latent_size=16, block_out_channels=(64, 128), attention_levels=(False, True)),
    "256": dict(
        resolution=256,
        latent_size=64,
        block_out_channels=(128, 256, 256),
        attention_levels=(False, True, True),
        layers_per_block=2,
        mask_token_size=16,
    ),
    "paper": dict(
        resolution=512,
        latent_size=128,
        block_out_channels=(192, 384, 576, 768),
        attention_levels=(False, True, True, True),
        layers_per_block=2,
        norm_num_groups=32,
        attention_head_dim=32,
        mask_embed_dim=256,
        mask_token_size=16,
    ),
}


def get_ldm_config(preset: str, n_classes: int, **overrides: Any) -> LdmConfig:
    """An LDM config from a preset name; an unknown name raises an error listing the presets."""
    if preset not in LDM_PRESETS:
        raise ValueError(f"unknown LDM preset {preset!r}; known presets: {sorted(LDM_PRESETS)}")
    return LdmConfig(n_classes=n_classes, **{**LDM_PRESETS[preset], **overrides})


# ----------------------------------------------------------------------------------------------------------
# Mask encoding.


def mask_onehot(masks: torch.Tensor, n_classes: int, ignore_index: int = 255) -> torch.Tensor:
    """``[B, R, R]`` class ids -> ``[B, K, R, R]`` float one-hot; unlabelled pixels get the zero vector."""
    assert masks.ndim == 3, f"expected masks [B, R, R], received {tuple(masks.shape)}"
    valid = masks != ignore_index
    if (masks[valid] >= n_classes).any() or (masks[valid] < 0).any():
        found = sorted(torch.unique(masks[valid]).tolist())
        raise ValueError(f"mask class ids must be in 0..{n_classes - 1} or {ignore_index}; found {found}")
    onehot = F.one_hot(torch.where(valid, masks, 0).long(), n_classes).permute(0, 3, 1, 2).float()
    return onehot * valid[:, None].float()


def unlabelled_masks(n: int, resolution: int, ignore_index: int = 255) -> torch.Tensor:
    """``[n, R, R]`` all-unlabelled masks: the null condition under which unlabelled tiles are trained."""
    return torch.full((n, resolution, resolution), ignore_index, dtype=torch.long)


def with_unlabelled(
    z_labelled: torch.Tensor, masks: torch.Tensor, z_unlabelled: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """One training batch of annotated latents (mask slot) and unlabelled latents (null slot), concatenated."""
    assert masks.ndim == 3 and z_labelled.shape[0] == masks.shape[0], (
        f"expected latents [B, C, h, w] with masks [B, R, R], got {tuple(z_labelled.shape)}, {tuple(masks.shape)}"
    )
    null = unlabelled_masks(z_unlabelled.shape[0], masks.shape[-1]).to(masks.device)
    return torch.cat([z_labelled, z_unlabelled.to(z_labelled.device)]), torch.cat([masks, null])


class MaskEncoder(nn.Module):
    """Full-resolution one-hot mask -> ``[B, size^2, D]`` tokens for cross-attention (DISC's mask encoder).

    Stride-2 convolutions halve the mask down to ``token_size``; a learned position embedding tells the tokens
    apart, because attention by itself does not know where a token came from.
    """

    def __init__(self, n_classes: int, resolution: int, token_size: int, dim: int) -> None:
        super().__init__()
        layers: list[nn.Module] = [nn.Conv2d(n_classes, dim // 2, 3, padding=1), nn.SiLU()]
        size, channels = resolution, dim // 2
        while size > token_size:
            layers += [nn.Conv2d(channels, dim, 3, stride=2, padding=1), nn.SiLU()]
            size, channels = size // 2, dim
        layers.append(nn.Conv2d(channels, dim, 1))
        self.net = nn.Sequential(*layers)
        self.position = nn.Parameter(torch.zeros(1, token_size * token_size, dim))
        self.resolution = resolution

    def forward(self, cond: torch.Tensor) -> torch.Tensor:
        assert cond.ndim == 4 and cond.shape[-1] == self.resolution, f"expected [B, K, R, R], got {cond.shape}"
        tokens = self.net(cond).flatten(2).transpose(1, 2)  # [B, size^2, D]
        return tokens + self.position


# ----------------------------------------------------------------------------------------------------------
# The denoiser.


class MaskConditionedUNet(nn.Module):
    """Predicts the noise in a noisy latent given the timestep and the mask condition ``[B, K, R, R]``."""

    def __init__(self, cfg: LdmConfig) -> None:
        super().__init__()
        self.cfg = cfg
        down = tuple(
            ("CrossAttnDownBlock2D" if cfg.conditioning == "cross_attention" else "AttnDownBlock2D")
            if a
            else "DownBlock2D"
            for a in cfg.attention_levels
        )
        up = tuple(
            ("CrossAttnUpBlock2D" if cfg.conditioning == "cross_attention" else "AttnUpBlock2D") if a else "UpBlock2D"
            for a in reversed(cfg.attention_levels)
        )
        common = dict(
            sample_size=cfg.latent_size,
            out_channels=cfg.latent_channels,
            layers_per_block=cfg.layers_per_block,
            block_out_channels=cfg.block_out_channels,
            down_block_types=down,
            up_block_types=up,
            norm_num_groups=cfg.norm_num_groups,
            attention_head_dim=cfg.attention_head_dim,
        )
        if cfg.conditioning == "concat":
            self.unet = UNet2DModel(in_channels=cfg.latent_channels + cfg.n_classes, **common)
            self.mask_encoder = None
        else:
            self.unet = UNet2DConditionModel(
                in_channels=cfg.latent_channels, cross_attention_dim=cfg.mask_embed_dim, **common
            )
            self.mask_encoder = MaskEncoder(cfg.n_classes, cfg.resolution, cfg.mask_token_size, cfg.mask_embed_dim)

    def forward(self, z_t: torch.Tensor, t: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        cfg = self.cfg
        assert z_t.shape[1:] == (cfg.latent_channels, cfg.latent_size, cfg.latent_size), (
            f"expected latents [B, {cfg.latent_channels}, {cfg.latent_size}, {cfg.latent_size}], got {z_t.shape}"
        )
        assert cond.shape[1:] == (cfg.n_classes, cfg.resolution, cfg.resolution), (
            f"expected conditions [B, {cfg.n_classes}, {cfg.resolution}, {cfg.resolution}], got {cond.shape}"
        )
        if self.mask_encoder is None:
            small = F.adaptive_avg_pool2d(cond, cfg.latent_size)  # class fractions per latent cell
            return self.unet(torch.cat([z_t, small], dim=1), t).sample
        return self.unet(z_t, t, encoder_hidden_states=self.mask_encoder(cond)).sample


# ----------------------------------------------------------------------------------------------------------
# Training.


@dataclass(frozen=True)
class LdmTrainConfig:
    """Optimiser settings of the denoiser (the architecture lives in :class:`LdmConfig`)."""

    batch_size: int = 32  # latents per step
    lr: float = 5e-4  # AdamW learning rate (after warm-up)
    warmup_steps: int = 50  # linear learning-rate warm-up
    weight_decay: float = 0.0
    ema_decay: float = 0.995  # decay of the EMA weights we sample from; 0 = sample from the raw weights
    seed: int = 0  # seeds initialisation and every random draw of the trainer

    def __post_init__(self) -> None:
        if self.batch_size < 1 or self.lr <= 0 or self.warmup_steps < 0 or not 0 <= self.ema_decay < 1:
            raise ValueError(
                f"LdmTrainConfig: expected batch_size >= 1, lr > 0, warmup_steps >= 0, "
                f"0 <= ema_decay < 1; received {self}"
            )

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


class LdmTrainer:
    """The denoiser, its EMA copy, AdamW and counters, advanced one minibatch at a time by :meth:`train_step`.

    Attributes:
        step: minibatches trained so far.
        images_seen: latents consumed so far.
        train_seconds: wall time spent in :meth:`train_step` so far, across resumes (provenance).
    """

    def __init__(self, cfg: LdmConfig, train_cfg: LdmTrainConfig, device: str | torch.device = "cpu") -> None:
        self.cfg, self.train_cfg = cfg, train_cfg
        self.device = device if isinstance(device, torch.device) else pick_device(device)
        torch.manual_seed(train_cfg.seed)
        self.model = MaskConditionedUNet(cfg).to(self.device)
        self.ema = MaskConditionedUNet(cfg).to(self.device).requires_grad_(False)
        self.ema.load_state_dict(self.model.state_dict())
        # diffusers' EMA (decay warm-up (1 + n) / (10 + n), capped at ema_decay), updating ``self.ema`` in place: its
        # shadow weights ARE the module's parameters, so checkpoints, sampling and fine-tuning from shipped weights
        # (``trainer.ema.load_state_dict``) treat the EMA as the ordinary module it is.
        self.ema_updater = EMAModel(self.ema.parameters(), decay=train_cfg.ema_decay)
        self.ema_updater.shadow_params = list(self.ema.parameters())
        self.opt = torch.optim.AdamW(self.model.parameters(), lr=train_cfg.lr, weight_decay=train_cfg.weight_decay)
        self.scheduler = cfg.scheduler()
        self.gen = torch.Generator("cpu").manual_seed(train_cfg.seed)
        self.step = 0
        self.images_seen = 0
        self.train_seconds = 0.0

    def _lr(self) -> float:
        warm = self.train_cfg.warmup_steps
        return self.train_cfg.lr * min(1.0, (self.step + 1) / warm) if warm else self.train_cfg.lr

    def denoising_loss(self, z0: torch.Tensor, masks: torch.Tensor, cond_dropout: bool = True) -> torch.Tensor:
        """The noise-prediction loss ``||eps - eps_theta(z_t, t, m)||^2`` (LDM's Eq. 1; DISC's Eq. 3 when ``z0`` is
        a fused latent z_0^mixed and ``masks`` the mask it was fused by), averaged over the batch.

        Args:
            z0: ``[B, C, h, w]`` clean latents.
            masks: ``[B, R, R]`` class ids; an all-255 mask is the null condition (the unconditional slot).
            cond_dropout: Replace a share ``cfg.cond_dropout`` of the conditions by the null condition
                (classifier-free guidance training). DISC's fused latents are trained without it: they are
                only meaningful under the mask that made them.
        """
        cfg = self.cfg
        assert z0.ndim == 4 and masks.shape == (z0.shape[0], cfg.resolution, cfg.resolution), (
            f"expected latents [B, C, h, w] and masks [B, {cfg.resolution}, {cfg.resolution}], "
            f"got {tuple(z0.shape)} and {tuple(masks.shape)}"
        )
        b = z0.shape[0]
        cond = mask_onehot(masks.to(self.device), cfg.n_classes)
        t = torch.randint(0, cfg.num_train_timesteps, (b,), generator=self.gen).to(self.device)
        noise = torch.randn(z0.shape, generator=self.gen).to(self.device)
        if cond_dropout:
            drop = (torch.rand(b, generator=self.gen) < cfg.cond_dropout).to(self.device)
            cond = cond * (~drop).float()[:, None, None, None]
        z_t = self.scheduler.add_noise(z0.to(self.device), noise, t)
        return F.mse_loss(self.model(z_t, t, cond), noise)

    def train_step(
        self,
        z0: torch.Tensor,
        masks: torch.Tensor,
        cotrain: tuple[torch.Tensor, torch.Tensor] | None = None,
        cond_dropout: bool = True,
    ) -> dict[str, float]:
        """One optimiser step on :meth:`denoising_loss` of ``(z0, masks)``.

        Args:
            z0, masks: The batch (real latents, or DISC's fused latents with ``cond_dropout=False``).
            cotrain: A second batch ``(z0, masks)`` of real latents, trained with condition dropout; the loss is then
                the mean of the two batches' losses (SD-DISC-CoTrain averages L_DISC and L_LDM).
            cond_dropout: Whether ``(z0, masks)`` gets classifier-free-guidance dropout.
        """
        self.model.train()
        start = time.perf_counter()
        main = self.denoising_loss(z0, masks, cond_dropout)
        stats: dict[str, float] = {}
        if cotrain is None:
            loss = main
        else:
            real = self.denoising_loss(*cotrain, cond_dropout=True)
            loss = (main + real) / 2
            stats = {"loss_main": float(main.detach()), "loss_cotrain": float(real.detach())}
        for group in self.opt.param_groups:
            group["lr"] = self._lr()
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        grad_norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), 1.0)
        self.opt.step()
        self.ema_updater.step(self.model.parameters())
        self.step += 1
        self.images_seen += z0.shape[0] + (cotrain[0].shape[0] if cotrain is not None else 0)
        self.train_seconds += time.perf_counter() - start
        return {"loss": float(loss.detach()), **stats, "grad_norm": float(grad_norm), "lr": self._lr()}

    @property
    def sampling_model(self) -> MaskConditionedUNet:
        """The weights to sample from: EMA, unless EMA is off."""
        return (self.ema if self.train_cfg.ema_decay > 0 else self.model).eval()

    # -- checkpoints ------------------------------------------------------------------------------------------

    def save_checkpoint(self, path: str | os.PathLike[str]) -> Path:
        """Write everything needed to resume, atomically (temp file in the same folder, then rename)."""
        payload = {
            "format": CHECKPOINT_FORMAT,
            "config": self.cfg.to_dict(),
            "train_config": self.train_cfg.to_dict(),
            "model": self.model.state_dict(),
            "ema": self.ema.state_dict(),
            "opt": self.opt.state_dict(),
            "step": self.step,
            "images_seen": self.images_seen,
            "train_seconds": self.train_seconds,
            "rng": self.gen.get_state(),
        }
        return atomic_torch_save(payload, path)

    def load_checkpoint(self, path: str | os.PathLike[str]) -> None:
        """Restore weights, optimiser, counters and RNG from a checkpoint of the same architecture."""
        path = Path(path)
        payload = read_ldm_checkpoint(path)
        if payload["config"] != self.cfg.to_dict() and LdmConfig.from_dict(payload["config"]) != self.cfg:
            raise CheckpointError(
                f"LDM checkpoint {path} was made for another architecture "
                f"({payload['config']}); delete it or use the config it was trained with"
            )
        try:
            self.model.load_state_dict(payload["model"])
            self.ema.load_state_dict(payload["ema"])
            self.opt.load_state_dict(payload["opt"])
        except (RuntimeError, KeyError, ValueError) as err:
            raise CheckpointError(f"LDM checkpoint {path} does not fit its config ({err}); delete it") from err
        self.step, self.images_seen = int(payload["step"]), int(payload["images_seen"])
        self.train_seconds = float(payload.get("train_seconds", 0.0))  # absent in checkpoints written before it
        self.ema_updater.optimization_step = self.step  # one EMA update per step: the decay warm-up resumes too
        self.gen.set_state(payload["rng"])

    @classmethod
    def from_checkpoint(cls, path: str | os.PathLike[str], device: str | torch.device = "cpu") -> LdmTrainer:
        """Rebuild a trainer from the configs stored in the checkpoint and restore its state, to resume."""
        payload = read_ldm_checkpoint(path)
        trainer = cls(LdmConfig.from_dict(payload["config"]), LdmTrainConfig(**payload["train_config"]), device)
        trainer.load_checkpoint(path)
        return trainer


def read_ldm_checkpoint(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Load and validate an LDM checkpoint (``weights_only=True``) onto the CPU; a clear error otherwise."""
    return read_torch_file(
        path,
        (CHECKPOINT_FORMAT,),
        ("config",),
        "LDM checkpoint",
        "delete it to retrain",
        "train the LDM first or fix the path",
    )


def load_denoiser(path: str | os.PathLike[str], device: str | torch.device = "cpu") -> MaskConditionedUNet:
    """The EMA denoiser of a checkpoint (the one to sample from), in eval mode without gradients."""
    payload = read_ldm_checkpoint(path)
    model = MaskConditionedUNet(LdmConfig.from_dict(payload["config"]))
    try:
        model.load_state_dict(payload["ema"])
    except RuntimeError as err:
        raise CheckpointError(f"LDM checkpoint {path}: weights do not fit its config ({err}); delete it") from err
    device = device if isinstance(device, torch.device) else pick_device(device)
    return model.to(device).eval().requires_grad_(False)


def export_pretrained_denoiser(
    checkpoint: str | os.PathLike[str], out: str | os.PathLike[str], provenance: dict[str, Any] | None = None
) -> Path:
    """A shippable copy of a training checkpoint: configs and the EMA weights in float16, no optimiser state.

    ``load_denoiser`` reads it (weights are cast back to float32 on load); the ``ldm_model`` asset fine-tunes from it.
    ``<out>.json`` records how it was made: the training run's provenance (beside the checkpoint, when the asset
    wrote one), the images seen, steps and training seconds the checkpoint carries, ``provenance`` (e.g. the
    commands that made it) and the machine.
    """
    payload = read_ldm_checkpoint(checkpoint)
    slim = {
        "format": CHECKPOINT_FORMAT,
        "config": payload["config"],
        "train_config": payload["train_config"],
        "ema": half_state(payload["ema"]),
        "step": payload["step"],
        "images_seen": payload["images_seen"],
    }
    path = atomic_torch_save(slim, out)
    write_provenance(
        path,
        {
            "training": read_provenance(checkpoint),
            "source_checkpoint": str(Path(checkpoint).resolve()),
            "step": int(payload["step"]),
            "images_seen": int(payload["images_seen"]),
            "train_seconds": round(float(payload.get("train_seconds", float("nan"))), 3),
            **(provenance or {}),
        },
    )
    return path
