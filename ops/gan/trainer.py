"""StyleGAN2-ADA training, one readable step at a time (no Dagster, no data loading).

A :class:`GanTrainer` owns the generator ``G``, its exponential moving average ``G_ema`` (what we sample
from), the discriminator ``D``, their Adam optimisers, the ADA augmentation pipe and controller, and its own
random-number state. The caller feeds minibatches of real tiles to :meth:`GanTrainer.train_step`:

1. **G step** — non-saturating logistic loss ``softplus(-D(aug(G(z))))`` with style mixing.
2. **D step** — ``softplus(D(aug(G(z)))) + softplus(-D(aug(real)))``; D's signs on reals feed ADA.
3. **R1 step** (every ``r1_interval`` steps, "lazy regularisation") — ``γ/2·|∇D(aug(real))|²`` scaled by the
   interval; Adam's lr and betas for D are adjusted for the skipped steps, as in StyleGAN2.
4. **EMA** of G's weights with a half-life in thousands of images.
5. **ADA** — adjust the augmentation probability p every ``ada_interval`` minibatches.

Checkpoints are one ``torch.save`` file of plain dicts and tensors (configs, state dicts, optimiser states,
ADA state, counters, RNG states), written atomically and read with ``weights_only=True``. Resuming from a
checkpoint continues bit-for-bit as if training had not stopped (given the same real batches).

Example:
    >>> trainer = GanTrainer(get_gan_config("demo"), TrainConfig(batch_size=16), device="cpu")
    >>> stats = trainer.train_step(real_batch)          # real_batch: [16, 3, 64, 64] in [-1, 1]
    >>> trainer.save_checkpoint("data/gan/checkpoint.pt")
"""

from __future__ import annotations

import contextlib
import copy
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from ops.common.config_dict import DictConfig
from ops.common.device import pick_device
from ops.common.file_io import CheckpointError, atomic_torch_save, read_torch_file
from ops.gan.augment import AUGMENT_PRESETS, AdaController, AugmentPipe
from ops.gan.networks import Discriminator, GanConfig, Generator

CHECKPOINT_FORMAT = "histofactory.stylegan2/1"
_CHECKPOINT_KEYS = (
    "format",
    "gan_config",
    "train_config",
    "G",
    "D",
    "G_ema",
    "opt_G",
    "opt_D",
    "augment",
    "ada",
    "step",
    "images_seen",
    "rng",
)


# ----------------------------------------------------------------------------------------------------------
# Configuration.


@dataclass(frozen=True)
class TrainConfig(DictConfig):
    """Hyperparameters of the training loop (the architecture lives in :class:`GanConfig`)."""

    batch_size: int = 16  # real images per step (and generated images per phase)
    lr: float = 2e-3  # Adam learning rate of G and D
    beta1: float = 0.0  # Adam β1
    beta2: float = 0.99  # Adam β2
    r1_gamma: float = 0.05  # R1 weight γ; ADA's heuristic is 0.0002·resolution²/batch (0.05 at 64 px, batch 16)
    r1_interval: int = 16  # steps between R1 penalties (lazy regularisation); 1 = every step
    ema_kimg: float = 5.0  # half-life of G_ema's weights, thousands of images (ADA: 10·batch/32)
    ema_rampup: float | None = 0.05  # early on, cap the half-life at this fraction of images seen; None = off
    style_mixing_prob: float = 0.9  # probability of mixing two latents in a G batch; 0 = off
    augment: bool = True  # use ADA (augment reals and fakes before D)
    augment_preset: str = "bgc"  # operations ADA may apply, see ops.gan.augment.AUGMENT_PRESETS
    ada_target: float = 0.6  # target of r_t = E[sign(D(real))]
    ada_interval: int = 4  # minibatches between p adjustments
    ada_kimg: float = 500.0  # thousands of images for p to move by 1
    seed: int = 0  # seeds network initialisation and every random draw of the trainer

    def __post_init__(self) -> None:
        for name in ("batch_size", "r1_interval", "ada_interval"):
            value = getattr(self, name)
            if not (isinstance(value, int) and value >= 1):
                raise ValueError(f"TrainConfig.{name}: expected a positive integer, received {value!r}")
        for name in ("lr", "ema_kimg", "ada_kimg"):
            if not getattr(self, name) > 0:
                raise ValueError(f"TrainConfig.{name}: expected > 0, received {getattr(self, name)!r}")
        if self.r1_gamma < 0:
            raise ValueError(f"TrainConfig.r1_gamma: expected >= 0, received {self.r1_gamma!r}")
        if not 0 <= self.style_mixing_prob <= 1:
            raise ValueError(f"TrainConfig.style_mixing_prob: expected [0, 1], received {self.style_mixing_prob!r}")
        if self.augment_preset not in AUGMENT_PRESETS:
            raise ValueError(
                f"TrainConfig.augment_preset: unknown {self.augment_preset!r}; known: {sorted(AUGMENT_PRESETS)}"
            )


# ----------------------------------------------------------------------------------------------------------
# Trainer.


class GanTrainer:
    """G, D, G_ema, optimisers, ADA and counters, advanced one minibatch at a time by :meth:`train_step`.

    Attributes:
        step: minibatches trained so far.
        images_seen: real images consumed so far.
    """

    def __init__(
        self,
        gan_cfg: GanConfig,  # architecture
        train_cfg: TrainConfig,  # loop hyperparameters
        device: str | torch.device = "cpu",  # 'auto' | 'cpu' | 'cuda[:i]' or a torch.device
    ) -> None:
        self.gan_cfg, self.train_cfg = gan_cfg, train_cfg
        self.device = device if isinstance(device, torch.device) else pick_device(device)
        self.step = 0
        self.images_seen = 0
        self.last_r1 = 0.0  # R1 penalty of the latest regularisation step
        self._rng: dict[str, torch.Tensor | None] = {"cpu": None, "cuda": None}
        with self._rng_fork():
            torch.default_generator.manual_seed(train_cfg.seed)
            if self.device.type == "cuda":
                torch.cuda.manual_seed(train_cfg.seed)
            self.G = Generator(gan_cfg).to(self.device)
            self.D = Discriminator(gan_cfg).to(self.device)
            self._save_rng()
        self.G_ema = copy.deepcopy(self.G).eval().requires_grad_(False)
        self.opt_G = torch.optim.Adam(self.G.parameters(), eps=1e-8, **self._adam_hparams(reg_interval=None))
        self.opt_D = torch.optim.Adam(self.D.parameters(), eps=1e-8, **self._adam_hparams(train_cfg.r1_interval))
        self.augment_pipe: AugmentPipe | None = None
        self.ada: AdaController | None = None
        if train_cfg.augment:
            c = train_cfg
            self.augment_pipe = AugmentPipe.from_preset(c.augment_preset).to(self.device)
            self.ada = AdaController(self.augment_pipe, c.ada_target, c.ada_interval, c.ada_kimg)

    def _adam_hparams(self, reg_interval: int | None) -> dict[str, Any]:
        """Adam lr and betas; with lazy regularisation every ``reg_interval`` steps the optimiser takes
        interval+1 updates per interval, so lr and betas are rescaled as in StyleGAN2."""
        c = self.train_cfg
        ratio = reg_interval / (reg_interval + 1) if reg_interval and c.r1_gamma > 0 else 1.0
        return {"lr": c.lr * ratio, "betas": (c.beta1**ratio, c.beta2**ratio)}

    # ---------------------------------------------------------------- random state
    @contextlib.contextmanager
    def _rng_fork(self) -> Iterator[None]:
        """Run a block with the trainer's own RNG state, leaving the caller's global RNG untouched."""
        devices = [self.device.index or 0] if self.device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices):
            if self._rng["cpu"] is not None:
                torch.set_rng_state(self._rng["cpu"])
            if devices and self._rng["cuda"] is not None:
                torch.cuda.set_rng_state(self._rng["cuda"], self.device)
            yield

    def _save_rng(self) -> None:
        self._rng["cpu"] = torch.get_rng_state()
        if self.device.type == "cuda":
            self._rng["cuda"] = torch.cuda.get_rng_state(self.device)

    # ---------------------------------------------------------------- one training step
    def _augment(self, img: torch.Tensor) -> torch.Tensor:
        return self.augment_pipe(img) if self.augment_pipe is not None else img

    def _generate(self, n: int, update_w_avg: bool) -> torch.Tensor:
        """n random images from G (random noise, style mixing), as seen during training."""
        z = torch.randn(n, self.gan_cfg.z_dim, device=self.device)
        ws = self.G.mapping(z, update_w_avg=update_w_avg)
        if self.train_cfg.style_mixing_prob > 0 and float(torch.rand([])) < self.train_cfg.style_mixing_prob:
            cutoff = int(torch.randint(1, self.G.num_ws, []))
            ws[:, cutoff:] = self.G.mapping(torch.randn_like(z))[:, cutoff:]
        return self.G.synthesis(ws, noise_mode="random")

    def _generator_step(self, n: int) -> float:
        self.G.requires_grad_(True)
        self.D.requires_grad_(False)
        fake_logits = self.D(self._augment(self._generate(n, update_w_avg=True)))
        loss_G = F.softplus(-fake_logits).mean()
        self.opt_G.zero_grad(set_to_none=True)
        loss_G.backward()
        self.opt_G.step()
        return float(loss_G.detach())

    def _discriminator_step(self, real: torch.Tensor) -> tuple[float, torch.Tensor, torch.Tensor]:
        self.G.requires_grad_(False)
        self.D.requires_grad_(True)
        with torch.no_grad():
            fake = self._generate(real.shape[0], update_w_avg=False)
        fake_logits = self.D(self._augment(fake))
        real_logits = self.D(self._augment(real))
        loss_D = F.softplus(fake_logits).mean() + F.softplus(-real_logits).mean()
        self.opt_D.zero_grad(set_to_none=True)
        loss_D.backward()
        self.opt_D.step()
        return float(loss_D.detach()), real_logits.detach(), fake_logits.detach()

    def _r1_step(self, real: torch.Tensor) -> float:
        """Lazy R1: penalise D's gradient on (augmented) reals, scaled by the interval it stands for."""
        real = real.detach().requires_grad_(True)
        real_logits = self.D(self._augment(real))
        (grad,) = torch.autograd.grad(real_logits.sum(), real, create_graph=True)
        penalty = grad.square().sum(dim=[1, 2, 3]).mean()
        loss = penalty * (self.train_cfg.r1_gamma / 2) * self.train_cfg.r1_interval
        self.opt_D.zero_grad(set_to_none=True)
        loss.backward()
        self.opt_D.step()
        return float(penalty.detach())

    @torch.no_grad()
    def _update_ema(self, n: int) -> None:
        c = self.train_cfg
        ema_nimg = c.ema_kimg * 1000
        if c.ema_rampup is not None:
            ema_nimg = min(ema_nimg, self.images_seen * c.ema_rampup)
        beta = 0.5 ** (n / max(ema_nimg, 1e-8))
        for p_ema, p in zip(self.G_ema.parameters(), self.G.parameters(), strict=True):
            p_ema.copy_(p.lerp(p_ema, beta))
        for b_ema, b in zip(self.G_ema.buffers(), self.G.buffers(), strict=True):
            b_ema.copy_(b)

    def train_step(self, real: torch.Tensor) -> dict[str, float]:
        """Train G and D on one minibatch of real images.

        Args:
            real: ``[N, img_channels, R, R]`` float in [-1, 1]; N is usually ``batch_size``.

        Returns:
            ``loss_G``, ``loss_D``, ``r1`` (penalty of the latest R1 step), ``ada_p``, ``d_real_sign``
            (mean sign of D on these reals; ADA's r_t), ``d_real``/``d_fake`` (mean logits), ``step`` and
            ``images_seen`` after the step.
        """
        R, C = self.gan_cfg.resolution, self.gan_cfg.img_channels
        if real.ndim != 4 or tuple(real.shape[1:]) != (C, R, R) or not real.is_floating_point():
            raise ValueError(
                f"real: expected a float tensor [N, {C}, {R}, {R}] in [-1, 1], received "
                f"{real.dtype} {tuple(real.shape)}"
            )
        real = real.to(self.device, torch.float32)
        n = real.shape[0]
        with self._rng_fork():
            loss_G = self._generator_step(n)
            loss_D, real_logits, fake_logits = self._discriminator_step(real)
            if self.train_cfg.r1_gamma > 0 and self.step % self.train_cfg.r1_interval == 0:
                self.last_r1 = self._r1_step(real)
            self._update_ema(n)
            if self.ada is not None:
                self.ada.update(real_logits)
            self._save_rng()
        self.step += 1
        self.images_seen += n
        return {
            "loss_G": loss_G,
            "loss_D": loss_D,
            "r1": self.last_r1,
            "ada_p": self.ada.p if self.ada is not None else 0.0,
            "d_real_sign": float(real_logits.sign().mean()),
            "d_real": float(real_logits.mean()),
            "d_fake": float(fake_logits.mean()),
            "step": float(self.step),
            "images_seen": float(self.images_seen),
        }

    @torch.no_grad()
    def sample(self, n: int, seed: int, psi: float = 1.0, noise_mode: str = "const") -> torch.Tensor:
        """``n`` images ``[n, C, R, R]`` from G_ema for latents drawn with ``seed`` (reproducible)."""
        gen = torch.Generator().manual_seed(seed)
        z = torch.randn(n, self.gan_cfg.z_dim, generator=gen).to(self.device)
        return self.G_ema(z, psi=psi, noise_mode=noise_mode)

    # ---------------------------------------------------------------- checkpoints
    def state_dict(self) -> dict[str, Any]:
        """Everything needed to resume, as plain dicts, numbers and tensors."""
        return {
            "format": CHECKPOINT_FORMAT,
            "gan_config": self.gan_cfg.to_dict(),
            "train_config": self.train_cfg.to_dict(),
            "G": self.G.state_dict(),
            "D": self.D.state_dict(),
            "G_ema": self.G_ema.state_dict(),
            "opt_G": self.opt_G.state_dict(),
            "opt_D": self.opt_D.state_dict(),
            "augment": self.augment_pipe.state_dict() if self.augment_pipe is not None else None,
            "ada": self.ada.state_dict() if self.ada is not None else None,
            "step": self.step,
            "images_seen": self.images_seen,
            "last_r1": self.last_r1,
            "rng": dict(self._rng),
        }

    def save_checkpoint(self, path: str | os.PathLike[str]) -> Path:
        """Write one checkpoint file atomically (temp file in the same folder, then ``os.replace``)."""
        return atomic_torch_save(self.state_dict(), path)

    def load_checkpoint(self, path: str | os.PathLike[str]) -> None:
        """Restore this trainer's full state from ``path`` (its GAN config must match this trainer's).

        Raises:
            CheckpointError: the file is missing, corrupt or truncated, or was made for another architecture.
        """
        path = Path(path)
        payload = read_checkpoint(path)
        ours = self.gan_cfg.to_dict()
        diffs = [
            f"{k}={payload['gan_config'].get(k)!r} (trainer: {v!r})"
            for k, v in ours.items()
            if payload["gan_config"].get(k) != v
        ]
        if diffs or set(payload["gan_config"]) != set(ours):
            raise CheckpointError(
                f"GAN checkpoint {path} was made for a different architecture: {', '.join(diffs) or 'keys differ'}; "
                f"delete it or set from_scratch=True to start over, or use the config it was trained with"
            )
        if (payload["augment"] is None) != (self.augment_pipe is None):
            raise CheckpointError(
                f"GAN checkpoint {path} has augment={payload['augment'] is not None} but this trainer has "
                f"augment={self.augment_pipe is not None}; use the same TrainConfig.augment or set from_scratch=True"
            )
        try:
            self.G.load_state_dict(payload["G"])
            self.D.load_state_dict(payload["D"])
            self.G_ema.load_state_dict(payload["G_ema"])
            self.opt_G.load_state_dict(payload["opt_G"])
            self.opt_D.load_state_dict(payload["opt_D"])
            # Optimiser moments resume, but lr/betas follow this trainer's TrainConfig, not the file's.
            for opt, reg_interval in ((self.opt_G, None), (self.opt_D, self.train_cfg.r1_interval)):
                for group in opt.param_groups:
                    group.update(self._adam_hparams(reg_interval))
            if self.augment_pipe is not None and self.ada is not None:
                self.augment_pipe.load_state_dict(payload["augment"])
                self.ada.load_state_dict(payload["ada"])
        except (RuntimeError, KeyError, ValueError, TypeError) as err:
            raise CheckpointError(
                f"GAN checkpoint {path} does not match the networks it claims to hold ({err}); "
                f"delete it or set from_scratch=True to start over"
            ) from err
        self.step = int(payload["step"])
        self.images_seen = int(payload["images_seen"])
        self.last_r1 = float(payload.get("last_r1", 0.0))
        rng = payload["rng"]
        self._rng = {"cpu": rng["cpu"], "cuda": rng.get("cuda") if self.device.type == "cuda" else None}

    @classmethod
    def from_checkpoint(
        cls,
        path: str | os.PathLike[str],  # checkpoint written by save_checkpoint
        device: str | torch.device = "cpu",  # where to put the networks
    ) -> GanTrainer:
        """Rebuild a trainer from the configs stored in the checkpoint and restore its state, to resume."""
        path = Path(path)
        payload = read_checkpoint(path)
        gan_cfg, train_cfg = _configs_from(payload, path)
        trainer = cls(gan_cfg, train_cfg, device)
        trainer.load_checkpoint(path)
        return trainer


def read_checkpoint(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Load and validate a checkpoint file with ``torch.load(weights_only=True)`` onto the CPU.

    Raises:
        CheckpointError: missing, unreadable, corrupt, truncated, or not a histofactory StyleGAN2 checkpoint.
    """
    return read_torch_file(
        path,
        (CHECKPOINT_FORMAT,),
        _CHECKPOINT_KEYS,
        "GAN checkpoint",
        "delete it or set from_scratch=True to retrain",
        "train a GAN first or fix the path",
    )


def _configs_from(payload: dict[str, Any], path: Path) -> tuple[GanConfig, TrainConfig]:
    try:
        return GanConfig.from_dict(payload["gan_config"]), TrainConfig.from_dict(payload["train_config"])
    except (ValueError, TypeError) as err:
        raise CheckpointError(
            f"GAN checkpoint {path} holds configs this code cannot read ({err}); "
            f"delete it or set from_scratch=True to retrain"
        ) from err


def load_generator(path: str | os.PathLike[str], device: str | torch.device = "cpu") -> Generator:
    """The EMA generator (the one to sample from) of a checkpoint, in eval mode without gradients.

    Raises:
        CheckpointError: see :func:`read_checkpoint`; also when the weights do not fit the stored config.
    """
    path = Path(path)
    device = device if isinstance(device, torch.device) else pick_device(device)
    payload = read_checkpoint(path)
    gan_cfg, _ = _configs_from(payload, path)
    G = Generator(gan_cfg)
    try:
        G.load_state_dict(payload["G_ema"])
    except RuntimeError as err:
        raise CheckpointError(
            f"GAN checkpoint {path}: G_ema weights do not fit its config ({err}); "
            f"delete it or set from_scratch=True to retrain"
        ) from err
    return G.to(device).eval().requires_grad_(False)
