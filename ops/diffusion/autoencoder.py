"""The first stage of a latent diffusion model: an autoencoder that maps tissue tiles to small latent grids.

Latent diffusion (LDM; Rombach et al. 2022, and DISC for Gleason grading) trains the diffusion model on the
latents of a frozen autoencoder instead of on pixels: at downsampling factor 4 a 64-px tile becomes a 16×16
grid, so the diffusion U-Net does 16× less work per step while the decoder restores the texture. This module
owns that autoencoder, built from the diffusers reference implementations (no downloads, trained here):

* ``kind="kl"`` → :class:`diffusers.AutoencoderKL`: a Gaussian posterior with a tiny KL pull towards N(0, I)
  (LDM's ``kl_weight = 1e-6``), so the latent space stays smooth without blurring reconstructions.
* ``kind="vq"`` → :class:`diffusers.VQModel`: the encoder output ``h`` is snapped to a learned codebook
  inside the decoder; diffusion works on the pre-quantisation ``h`` and decoding quantises it.

Latents are multiplied by ``latent_scale = 1 / std(latents)`` (Stable Diffusion's ``scaling_factor``, fitted
on real tiles by :func:`fit_latent_scale`) so the diffusion model sees unit-variance inputs whatever the
autoencoder learned.

Tensor layouts: images ``[B, 3, R, R]`` float in [-1, 1]; latents ``[B, latent_channels, R/f, R/f]`` with
``f = 2 ** (len(block_out_channels) - 1)``.

Files: a training checkpoint (:meth:`AutoencoderTrainer.save_checkpoint`: config, weights, optimiser, counters,
RNG, latent scale) and an inference file (:func:`save_autoencoder`: config, fp32 weights, latent scale). Both
are plain dicts of numbers and tensors, written atomically and read with ``torch.load(weights_only=True)``.

Example:
    >>> trainer = AutoencoderTrainer(get_autoencoder_config("demo"), device="cpu")
    >>> stats = trainer.train_step(batch)                  # batch: [16, 3, 64, 64] in [-1, 1]
    >>> trainer.fit_latent_scale([batch])
    >>> save_autoencoder("data/ae/model.pt", trainer.model, trainer.cfg, trainer.latent_scale)
    >>> model, cfg, scale = load_autoencoder("data/ae/model.pt")
    >>> z = encode(model, batch, scale)                    # [16, 4, 16, 16], std ≈ 1
    >>> x = decode(model, z, scale)                        # [16, 3, 64, 64] in [-1, 1]
"""

from __future__ import annotations

import contextlib
import math
import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from diffusers import AutoencoderKL, VQModel

from ops.common.config_dict import DictConfig
from ops.common.device import pick_device
from ops.common.file_io import CheckpointError, atomic_torch_save, half_state, read_torch_file

AE_KINDS = ("kl", "vq")
CHECKPOINT_FORMAT = "histofactory.autoencoder-checkpoint/1"  # training state, to resume
MODEL_FORMAT = "histofactory.autoencoder/1"  # inference weights, for the diffusion stage
_CHECKPOINT_KEYS = ("format", "config", "hparams", "model", "optimizer", "step", "images_seen", "latent_scale", "rng")
_MODEL_KEYS = ("format", "config", "model", "latent_scale")

Autoencoder = AutoencoderKL | VQModel

# ----------------------------------------------------------------------------------------------------------
# Configuration and presets.


@dataclass(frozen=True)
class AutoencoderConfig(DictConfig):
    """Architecture of one autoencoder (diffusers ``AutoencoderKL`` or ``VQModel``).

    The encoder has one block per entry of ``block_out_channels`` and halves the resolution after every block
    but the last, so the downsampling factor is ``2 ** (len(block_out_channels) - 1)``; the decoder mirrors it.
    """

    kind: str = "kl"  # 'kl' (AutoencoderKL, Gaussian latents) | 'vq' (VQModel, codebook latents)
    resolution: int = 64  # training tile side, px; the networks are convolutional and accept any multiple of factor
    block_out_channels: tuple[int, ...] = (32, 64, 64)  # channels per encoder block, highest resolution first
    layers_per_block: int = 1  # ResNet layers per encoder block (the decoder has one more, as in diffusers)
    latent_channels: int = 4  # channels of the latent grid the diffusion model works on
    norm_num_groups: int = 16  # GroupNorm groups; must divide every entry of block_out_channels
    num_vq_embeddings: int = 256  # codebook size (kind='vq' only)
    mid_block_attention: bool = True  # self-attention in the encoder/decoder mid blocks (at R/factor px)

    def __post_init__(self) -> None:
        # Accept lists (JSON, YAML) but store a tuple so the config stays hashable and compares equal.
        object.__setattr__(self, "block_out_channels", tuple(self.block_out_channels))
        if self.kind not in AE_KINDS:
            raise ValueError(f"AutoencoderConfig.kind: expected one of {list(AE_KINDS)}, received {self.kind!r}")
        channels = self.block_out_channels
        if not channels or not all(isinstance(c, int) and c >= 1 for c in channels):
            raise ValueError(
                f"AutoencoderConfig.block_out_channels: expected a non-empty tuple of positive integers, "
                f"received {channels!r}"
            )
        for name in ("resolution", "layers_per_block", "latent_channels", "norm_num_groups", "num_vq_embeddings"):
            value = getattr(self, name)
            if not (isinstance(value, int) and value >= 1):
                raise ValueError(f"AutoencoderConfig.{name}: expected a positive integer, received {value!r}")
        if self.resolution % self.factor:
            raise ValueError(
                f"AutoencoderConfig.resolution: {self.resolution} px is not divisible by the downsampling factor "
                f"{self.factor} (from {len(channels)} blocks); use a multiple of {self.factor}"
            )
        bad = [c for c in channels if c % self.norm_num_groups]
        if bad:
            raise ValueError(
                f"AutoencoderConfig.norm_num_groups: {self.norm_num_groups} groups must divide every entry of "
                f"block_out_channels {channels}, but not {bad}; pick a common divisor"
            )

    @property
    def factor(self) -> int:
        """Downsampling factor image side / latent side."""
        return 2 ** (len(self.block_out_channels) - 1)

    @property
    def latent_resolution(self) -> int:
        """Latent grid side at the training resolution, px."""
        return self.resolution // self.factor


AE_PRESETS: dict[str, AutoencoderConfig] = {
    # 64 px → 4×16×16, 0.24M parameters. Batch 16 on 2 CPU cores: ~7 steps/s; 450 steps (~60 s) take held-out
    # IHC crops from 8.4 dB PSNR at init to 27.4 dB (lr 1e-3). Twice the width (32, 64, 64) runs 2.5× slower and
    # reaches only 24 dB in the same time.
    "demo": AutoencoderConfig(
        kind="kl",
        resolution=64,
        block_out_channels=(16, 32, 32),
        layers_per_block=1,
        latent_channels=4,
        norm_num_groups=8,
    ),
    # 256 px benchmarking size → 4×64×64, two ResNet layers per block.
    "256": AutoencoderConfig(
        kind="kl",
        resolution=256,
        block_out_channels=(64, 128, 128),
        layers_per_block=2,
        latent_channels=4,
        norm_num_groups=32,
    ),
    # LDM's KL-f4 first stage (ch 128, ch_mult 1-2-4, 2 ResNet blocks, 3 latent channels) at 512 px → 3×128×128.
    "paper": AutoencoderConfig(
        kind="kl",
        resolution=512,
        block_out_channels=(128, 256, 512),
        layers_per_block=2,
        latent_channels=3,
        norm_num_groups=32,
    ),
}


def get_autoencoder_config(name: str) -> AutoencoderConfig:
    """Look up a preset by name.

    Raises:
        ValueError: ``name`` is not a preset; the message lists the known names.
    """
    if name not in AE_PRESETS:
        raise ValueError(f"unknown autoencoder preset {name!r}; known presets: {sorted(AE_PRESETS)}")
    return AE_PRESETS[name]


# ----------------------------------------------------------------------------------------------------------
# Networks and the encode / decode / metrics functions.


def build_autoencoder(cfg: AutoencoderConfig) -> Autoencoder:
    """A freshly initialised diffusers autoencoder for ``cfg`` (on the CPU, in train mode)."""
    n = len(cfg.block_out_channels)
    common: dict[str, Any] = {
        "in_channels": 3,
        "out_channels": 3,
        "down_block_types": ("DownEncoderBlock2D",) * n,
        "up_block_types": ("UpDecoderBlock2D",) * n,
        "block_out_channels": cfg.block_out_channels,
        "layers_per_block": cfg.layers_per_block,
        "latent_channels": cfg.latent_channels,
        "norm_num_groups": cfg.norm_num_groups,
        "sample_size": cfg.resolution,
        "mid_block_add_attention": cfg.mid_block_attention,
    }
    if cfg.kind == "kl":
        return AutoencoderKL(**common)
    return VQModel(**common, num_vq_embeddings=cfg.num_vq_embeddings, vq_embed_dim=cfg.latent_channels)


def _factor(model: Autoencoder) -> int:
    return 2 ** (len(model.config.block_out_channels) - 1)


def _check_images(x: torch.Tensor, model: Autoencoder, name: str = "x") -> None:
    f = _factor(model)
    if x.ndim != 4 or x.shape[1] != 3 or x.shape[2] % f or x.shape[3] % f or not x.is_floating_point():
        raise ValueError(
            f"{name}: expected a float tensor [B, 3, H, W] in [-1, 1] with H and W multiples of the "
            f"downsampling factor {f}, received {x.dtype} {tuple(x.shape)}"
        )


@contextlib.contextmanager
def _eval_mode(model: torch.nn.Module) -> Iterator[None]:
    """Eval mode and no autograd for a block, restoring the caller's train/eval mode afterwards."""
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            yield
    finally:
        model.train(was_training)


def _raw_latents(model: Autoencoder, x: torch.Tensor) -> torch.Tensor:
    """Unscaled deterministic latents: the posterior mean (kl) or the pre-quantisation ``h`` (vq)."""
    if isinstance(model, AutoencoderKL):
        return model.encode(x).latent_dist.mode()
    return model.encode(x).latents


def encode(model: Autoencoder, x: torch.Tensor, scale: float = 1.0) -> torch.Tensor:
    """Images ``[B, 3, H, W]`` in [-1, 1] → scaled latents ``[B, latent_channels, H/f, W/f]`` (no grad).

    Deterministic, so the same tile always gives the same latent: the posterior mean for kl (LDM samples, but
    with kl_weight 1e-6 the posterior std is tiny), the pre-quantisation latent for vq (LDM trains diffusion
    on it and quantises when decoding).
    """
    _check_images(x, model)
    device = next(model.parameters()).device
    with _eval_mode(model):
        return _raw_latents(model, x.to(device, torch.float32)) * scale


def decode(model: Autoencoder, z: torch.Tensor, scale: float = 1.0) -> torch.Tensor:
    """Scaled latents ``[B, latent_channels, h, w]`` → images ``[B, 3, h·f, w·f]`` clamped to [-1, 1] (no grad).

    For vq the latents are snapped to the codebook first (``VQModel.decode`` quantises by default), so
    diffusion samples that land between codes still decode to in-distribution textures.
    """
    c = model.config.latent_channels
    if z.ndim != 4 or z.shape[1] != c or not z.is_floating_point():
        raise ValueError(f"z: expected a float tensor [B, {c}, h, w] of latents, received {z.dtype} {tuple(z.shape)}")
    device = next(model.parameters()).device
    with _eval_mode(model):
        return model.decode(z.to(device, torch.float32) / scale).sample.clamp(-1.0, 1.0)


def fit_latent_scale(model: Autoencoder, x_batches: Iterable[torch.Tensor] | torch.Tensor) -> float:
    """``1 / std`` of the unscaled latents of real images, as Stable Diffusion's ``scaling_factor``.

    The diffusion model's noise schedule assumes unit-variance data; an autoencoder's latents can have any
    spread (kl: tiny KL weight barely constrains it; vq: the codebook has no fixed scale), so we measure it.

    Args:
        model: a trained autoencoder.
        x_batches: one image batch ``[B, 3, H, W]`` in [-1, 1] or an iterable of them (more batches, better
            estimate; SD used one batch).

    Raises:
        ValueError: no images, or latents with zero spread (an untrained or collapsed encoder).
    """
    batches = [x_batches] if isinstance(x_batches, torch.Tensor) else x_batches
    count, total, total_sq = 0, 0.0, 0.0
    for x in batches:
        z = encode(model, x, 1.0).double()
        count += z.numel()
        total += float(z.sum())
        total_sq += float(z.square().sum())
    if count < 2:
        raise ValueError("fit_latent_scale: x_batches holds no images; pass at least one batch of real tiles")
    var = (total_sq - total * total / count) / (count - 1)
    if not var > 0:
        raise ValueError(f"fit_latent_scale: latents have variance {var!r}; the encoder output is constant")
    return 1.0 / math.sqrt(var)


def reconstruction_metrics(model: Autoencoder, x: torch.Tensor) -> dict[str, float]:
    """How well ``decode(encode(x))`` reproduces ``x``: ``mse`` and ``l1`` on the [-1, 1] scale (the training
    losses) and ``psnr`` in dB for the [0, 1] data range (the usual image-quality unit), batch-averaged."""
    _check_images(x, model)
    device = next(model.parameters()).device
    x = x.to(device, torch.float32)
    rec = decode(model, encode(model, x))
    mse = float((rec - x).square().mean())
    l1 = float((rec - x).abs().mean())
    psnr = 10.0 * math.log10(4.0 / max(mse, 1e-12))  # [0, 1] range: mse/4, peak 1
    return {"mse": mse, "l1": l1, "psnr": psnr}


# ----------------------------------------------------------------------------------------------------------
# Files.


def _config_from(payload: dict[str, Any], path: Path, what: str, fix: str) -> AutoencoderConfig:
    try:
        return AutoencoderConfig.from_dict(payload["config"])
    except (ValueError, TypeError) as err:
        raise CheckpointError(f"{what} {path} holds a config this code cannot read ({err}); {fix}") from err


def _load_weights(model: torch.nn.Module, state: dict[str, Any], path: Path, what: str, fix: str) -> None:
    try:
        model.load_state_dict(state)
    except (RuntimeError, KeyError, TypeError) as err:
        raise CheckpointError(f"{what} {path}: weights do not fit its config ({err}); {fix}") from err


def save_autoencoder(
    path: str | os.PathLike[str],  # destination file, e.g. data/autoencoder/model.pt
    model: Autoencoder,  # trained network built by build_autoencoder(cfg)
    cfg: AutoencoderConfig,  # its configuration
    latent_scale: float,  # 1 / std of its latents, from fit_latent_scale
) -> Path:
    """Write an inference-only file (config, fp32 CPU weights, latent scale) atomically."""
    expected = AutoencoderKL if cfg.kind == "kl" else VQModel
    if not isinstance(model, expected) or tuple(model.config.block_out_channels) != cfg.block_out_channels:
        raise ValueError(
            f"save_autoencoder: model is a {type(model).__name__} with block_out_channels "
            f"{tuple(model.config.block_out_channels)}, but cfg expects a {expected.__name__} with "
            f"{cfg.block_out_channels}; pass the config the model was built from"
        )
    if not (isinstance(latent_scale, int | float) and math.isfinite(latent_scale) and latent_scale > 0):
        raise ValueError(
            f"save_autoencoder: latent_scale must be a finite positive number (from fit_latent_scale), "
            f"received {latent_scale!r}"
        )
    state = {k: v.detach().to("cpu", torch.float32) for k, v in model.state_dict().items()}
    return atomic_torch_save(
        {"format": MODEL_FORMAT, "config": cfg.to_dict(), "model": state, "latent_scale": float(latent_scale)}, path
    )


def load_autoencoder(
    path: str | os.PathLike[str],  # file from save_autoencoder, or a training checkpoint with a fitted scale
    device: str | torch.device = "cpu",  # 'auto' | 'cpu' | 'cuda[:i]' or a torch.device
) -> tuple[Autoencoder, AutoencoderConfig, float]:
    """The frozen autoencoder (eval mode, no gradients), its config and latent scale, for the diffusion stage.

    Training checkpoints are accepted too, so a run can be used before it is exported.

    Raises:
        CheckpointError: missing, corrupt or truncated file, another kind of file, weights that do not fit the
            stored config, or a training checkpoint whose latent scale was never fitted.
    """
    path = Path(path)
    what, fix = "autoencoder file", "train the autoencoder first, or fix the path"
    payload = read_torch_file(path, (MODEL_FORMAT, CHECKPOINT_FORMAT), _MODEL_KEYS, what, fix)
    cfg = _config_from(payload, path, what, fix)
    scale = payload["latent_scale"]
    if scale is None:
        raise CheckpointError(
            f"{what} {path} is a training checkpoint without a latent scale; call "
            f"AutoencoderTrainer.fit_latent_scale and save again"
        )
    model = build_autoencoder(cfg)
    _load_weights(model, payload["model"], path, what, fix)
    device = device if isinstance(device, torch.device) else pick_device(device)
    return model.to(device).eval().requires_grad_(False), cfg, float(scale)


# ----------------------------------------------------------------------------------------------------------
# Training.


class AutoencoderTrainer:
    """An autoencoder, its Adam optimiser, counters and random state, advanced one batch at a time.

    Loss per step (no perceptual or adversarial terms: they need pretrained or extra networks; L1 alone gives
    sharp-enough tissue texture at factor 4):

    * kl: ``L1 + kl_weight · KL / (3·H·W)``. LDM sums L1 over pixels and weights the per-image KL by 1e-6;
      we average L1 instead, so the KL is divided by the pixel count to keep LDM's balance.
    * vq: ``L1 + codebook/commitment loss`` as returned by diffusers' VectorQuantizer (β = 0.25); the codebook
      starts on encoder outputs of the first batch (see :meth:`_init_codebook`).

    Attributes:
        step: batches trained so far.
        images_seen: images consumed so far.
        latent_scale: 1 / std of the latents once :meth:`fit_latent_scale` ran, else None.
    """

    def __init__(
        self,
        cfg: AutoencoderConfig,  # architecture
        lr: float = 1e-3,  # Adam learning rate; best of 5e-4…5e-3 on the demo preset in 60 s (5e-3 unstable)
        kl_weight: float = 1e-6,  # weight of the per-image KL relative to the per-image summed L1 (LDM: 1e-6)
        device: str | torch.device = "cpu",  # 'auto' | 'cpu' | 'cuda[:i]' or a torch.device
        seed: int = 0,  # seeds initialisation and posterior sampling
    ) -> None:
        if not lr > 0:
            raise ValueError(f"AutoencoderTrainer.lr: expected > 0, received {lr!r}")
        if not kl_weight >= 0:
            raise ValueError(f"AutoencoderTrainer.kl_weight: expected >= 0, received {kl_weight!r}")
        self.cfg = cfg
        self.lr, self.kl_weight, self.seed = float(lr), float(kl_weight), int(seed)
        self.device = device if isinstance(device, torch.device) else pick_device(device)
        self.step = 0
        self.images_seen = 0
        self.latent_scale: float | None = None
        with torch.random.fork_rng(devices=[]):  # initialise from the seed without touching the caller's RNG
            torch.manual_seed(self.seed)
            self.model = build_autoencoder(cfg)
        self.model.to(self.device).train()
        # Posterior sampling draws from the trainer's own generator, so a checkpoint can resume it exactly.
        self.generator = torch.Generator(device=self.device).manual_seed(self.seed)
        # β1 = 0.5 as in LDM's autoencoder training: less momentum, steadier with few large steps.
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=self.lr, betas=(0.5, 0.9))

    def train_step(self, x: torch.Tensor) -> dict[str, float]:
        """One optimiser step on a batch of real tiles.

        Args:
            x: ``[B, 3, R, R]`` float in [-1, 1], R = ``cfg.resolution``.

        Returns:
            ``l1``, ``mse`` (on the [-1, 1] scale), ``kl`` (per image, nats; kind 'kl') or ``vq`` (codebook +
            commitment loss; kind 'vq'), ``loss`` (what was minimised), ``step`` and ``images_seen`` after it.
        """
        R = self.cfg.resolution
        if x.ndim != 4 or tuple(x.shape[1:]) != (3, R, R) or not x.is_floating_point():
            raise ValueError(
                f"x: expected a float tensor [B, 3, {R}, {R}] in [-1, 1], received {x.dtype} {tuple(x.shape)}"
            )
        x = x.to(self.device, torch.float32)
        self.model.train()
        stats: dict[str, float] = {}
        if isinstance(self.model, AutoencoderKL):
            posterior = self.model.encode(x).latent_dist
            rec = self.model.decode(posterior.sample(generator=self.generator)).sample
            kl = posterior.kl().mean()  # summed over latent elements, averaged over images
            reg = kl * (self.kl_weight / x[0].numel())
            stats["kl"] = float(kl.detach())
        else:
            h = self.model.encode(x).latents
            if self.step == 0:
                self._init_codebook(h.detach())
            out = self.model.decode(h)
            rec, reg = out.sample, out.commit_loss.mean()
            stats["vq"] = float(reg.detach())
        l1 = (rec - x).abs().mean()
        loss = l1 + reg
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        self.step += 1
        self.images_seen += x.shape[0]
        with torch.no_grad():
            mse = float((rec.detach() - x).square().mean())
        return {
            "l1": float(l1.detach()),
            "mse": mse,
            **stats,
            "loss": float(loss.detach()),
            "step": float(self.step),
            "images_seen": float(self.images_seen),
        }

    @torch.no_grad()
    def _init_codebook(self, h: torch.Tensor) -> None:
        """Set the vq codebook to encoder outputs of the first batch (data-dependent initialisation).

        diffusers initialises codes in ±1/num_vq_embeddings, far smaller than the encoder's outputs; the
        commitment loss then shrinks the encoder's outputs towards ~0, the decoder sees a near-constant input and
        reconstructions stay at the mean colour for hundreds of steps (seen on IHC crops). Starting the codes on
        real encoder outputs avoids that collapse.
        """
        vectors = h.permute(0, 2, 3, 1).reshape(-1, h.shape[1])  # [B·h·w, C]
        k = self.cfg.num_vq_embeddings
        if vectors.shape[0] >= k:
            pick = torch.randperm(vectors.shape[0], generator=self.generator, device=self.device)[:k]
        else:
            pick = torch.randint(vectors.shape[0], (k,), generator=self.generator, device=self.device)
        self.model.quantize.embedding.weight.copy_(vectors[pick])

    def fit_latent_scale(self, x_batches: Iterable[torch.Tensor] | torch.Tensor) -> float:
        """Measure and keep ``latent_scale`` (see :func:`fit_latent_scale`); call it after training."""
        self.latent_scale = fit_latent_scale(self.model, x_batches)
        return self.latent_scale

    # ---------------------------------------------------------------- checkpoints
    def state_dict(self) -> dict[str, Any]:
        """Everything needed to resume, as plain dicts, numbers and tensors."""
        return {
            "format": CHECKPOINT_FORMAT,
            "config": self.cfg.to_dict(),
            "hparams": {"lr": self.lr, "kl_weight": self.kl_weight, "seed": self.seed},
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "step": self.step,
            "images_seen": self.images_seen,
            "latent_scale": self.latent_scale,
            "rng": {"device_type": self.device.type, "state": self.generator.get_state()},
        }

    def save_checkpoint(self, path: str | os.PathLike[str]) -> Path:
        """Write one checkpoint file atomically (temp file in the same folder, then ``os.replace``)."""
        return atomic_torch_save(self.state_dict(), path)

    def load_checkpoint(self, path: str | os.PathLike[str]) -> None:
        """Restore this trainer's full state from ``path`` (made for the same config).

        The learning rate and KL weight stay this trainer's; the optimiser moments and the random state resume.
        Resuming is bit-exact on the same device type; across CPU/CUDA the sampler is reseeded from seed + step.

        Raises:
            CheckpointError: the file is missing, corrupt or truncated, is not an autoencoder training
                checkpoint, or was made for another architecture.
        """
        path = Path(path)
        what, fix = "autoencoder checkpoint", "delete it to train from scratch, or fix the path"
        payload = read_torch_file(path, (CHECKPOINT_FORMAT,), _CHECKPOINT_KEYS, what, fix)
        theirs = _config_from(payload, path, what, fix)
        if theirs != self.cfg:
            diffs = [
                f"{k}={v!r} (trainer: {getattr(self.cfg, k)!r})"
                for k, v in theirs.to_dict().items()
                if v != self.cfg.to_dict()[k]
            ]
            raise CheckpointError(
                f"{what} {path} was made for a different architecture: {', '.join(diffs)}; use the config it was "
                f"trained with, or delete it to train from scratch"
            )
        _load_weights(self.model, payload["model"], path, what, fix)
        try:
            self.optimizer.load_state_dict(payload["optimizer"])
        except (ValueError, KeyError, TypeError) as err:
            raise CheckpointError(f"{what} {path}: optimiser state does not fit the model ({err}); {fix}") from err
        for group in self.optimizer.param_groups:
            group["lr"] = self.lr
        self.step = int(payload["step"])
        self.images_seen = int(payload["images_seen"])
        scale = payload["latent_scale"]
        self.latent_scale = None if scale is None else float(scale)
        rng = payload["rng"]
        if isinstance(rng, dict) and rng.get("device_type") == self.device.type:
            self.generator.set_state(rng["state"])
        else:
            self.generator.manual_seed(self.seed + self.step)

    @classmethod
    def from_checkpoint(
        cls,
        path: str | os.PathLike[str],  # checkpoint written by save_checkpoint
        device: str | torch.device = "cpu",  # where to put the model
    ) -> AutoencoderTrainer:
        """Rebuild a trainer from the config and hyperparameters stored in the checkpoint, to resume."""
        path = Path(path)
        what, fix = "autoencoder checkpoint", "delete it to train from scratch, or fix the path"
        payload = read_torch_file(path, (CHECKPOINT_FORMAT,), _CHECKPOINT_KEYS, what, fix)
        hp = payload["hparams"]
        trainer = cls(
            _config_from(payload, path, what, fix),
            lr=hp["lr"],
            kl_weight=hp["kl_weight"],
            device=device,
            seed=hp["seed"],
        )
        trainer.load_checkpoint(path)
        return trainer


def export_pretrained_autoencoder(path: str | os.PathLike[str], out: str | os.PathLike[str]) -> Path:
    """A shippable copy of an autoencoder file: the same format with float16 weights (half the bytes).

    ``load_autoencoder`` reads it (weights are cast back to float32 on load); the ``autoencoder`` asset fine-tunes
    from it, and the shipped LDM was trained on its latents.
    """
    model, cfg, scale = load_autoencoder(path)
    return atomic_torch_save(
        {
            "format": MODEL_FORMAT,
            "config": cfg.to_dict(),
            "model": half_state(model.state_dict()),
            "latent_scale": float(scale),
        },
        out,
    )
