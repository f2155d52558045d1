"""Adaptive discriminator augmentation (ADA) for small histology tile sets.

Modelled on NVlabs stylegan2-ada-pytorch ``training/augment.py`` ('bgc' pipeline), reduced to the
operations that are exact on a pixel grid plus colour:

* geometric, integer-only (no resampling blur): x-flip, 90° rotations, integer translation with reflect or
  wrap padding — all composed into one index map per sample and applied with a single ``gather``;
* colour, as one 4×4 affine colour matrix per sample: brightness, contrast, hue rotation about the luma
  axis, saturation. Stain intensity and hue vary between labs and scanners, so these matter for histology.

Every operation fires per sample with probability ``p * op_weight``; ``p`` is a buffer that
:class:`AdaController` tunes so the discriminator cannot overfit. Everything is vectorised over the batch and
differentiable, so it can sit between G and D and inside the R1 penalty.

Images are ``[N, C, H, W]`` float in ~[-1, 1] (square). Geometric ops keep the set of pixel values; colour
ops are not clamped (as in ADA: D sees reals and fakes augmented alike, and clamping would cut G's gradient).
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

# Operation weights of named pipelines; unlisted operations stay off.
AUGMENT_PRESETS: dict[str, dict[str, float]] = {
    "bgc": {"xflip": 1, "rotate90": 1, "xint": 1, "brightness": 1, "contrast": 1, "hue": 1, "saturation": 1},
    "bg": {"xflip": 1, "rotate90": 1, "xint": 1},
    "c": {"brightness": 1, "contrast": 1, "hue": 1, "saturation": 1},
}
PAD_MODES = ("reflect", "wrap")


def _reflect_index(i: torch.Tensor, size: int) -> torch.Tensor:
    """Map any integer index into [0, size) by mirror reflection without repeating the edge pixel."""
    if size == 1:
        return torch.zeros_like(i)
    period = 2 * size - 2
    i = torch.remainder(i, period)
    return torch.where(i >= size, period - i, i)


def _rotation_about_luma(theta: torch.Tensor) -> torch.Tensor:
    """[N] angles (radians) → [N, 3, 3] rotations about the grey axis (1, 1, 1)/√3 (Rodrigues' formula)."""
    a = 1 / math.sqrt(3)  # every component of the unit grey axis
    K = torch.tensor([[0.0, -a, a], [a, 0.0, -a], [-a, a, 0.0]], device=theta.device)  # cross-product matrix
    eye = torch.eye(3, device=theta.device)
    s, c = theta.sin().reshape(-1, 1, 1), theta.cos().reshape(-1, 1, 1)
    return eye + s * K + (1 - c) * (K @ K)


class AugmentPipe(nn.Module):
    """Batched, per-sample random augmentation with a global strength ``p`` (buffer, starts at 0)."""

    def __init__(
        self,
        xflip: float = 0.0,  # weight of horizontal flips (a flip is then drawn with probability 1/2)
        rotate90: float = 0.0,  # weight of rotations by a random multiple of 90°
        xint: float = 0.0,  # weight of integer translations
        brightness: float = 0.0,  # weight of additive brightness shifts
        contrast: float = 0.0,  # weight of multiplicative contrast changes
        hue: float = 0.0,  # weight of hue rotations about the luma axis
        saturation: float = 0.0,  # weight of saturation changes
        xint_max: float = 0.125,  # largest translation, fraction of the image side
        brightness_std: float = 0.2,  # std of the brightness shift, in [-1, 1] image units
        contrast_std: float = 0.5,  # std of log2(contrast factor)
        hue_max: float = 1.0,  # largest hue rotation, fraction of π
        saturation_std: float = 1.0,  # std of log2(saturation factor)
        pad_mode: str = "reflect",  # how translations fill the border: 'reflect' | 'wrap'
        p: float = 0.0,  # initial augmentation probability
    ) -> None:
        super().__init__()
        if pad_mode not in PAD_MODES:
            raise ValueError(f"AugmentPipe.pad_mode: expected one of {PAD_MODES}, received {pad_mode!r}")
        self.weights = {
            "xflip": xflip,
            "rotate90": rotate90,
            "xint": xint,
            "brightness": brightness,
            "contrast": contrast,
            "hue": hue,
            "saturation": saturation,
        }
        for name, value in self.weights.items():
            if value < 0:
                raise ValueError(f"AugmentPipe.{name}: expected a weight >= 0, received {value!r}")
        self.xint_max, self.brightness_std, self.contrast_std = xint_max, brightness_std, contrast_std
        self.hue_max, self.saturation_std, self.pad_mode = hue_max, saturation_std, pad_mode
        self.register_buffer("p", torch.tensor(float(p)))

    @classmethod
    def from_preset(cls, name: str, **kwargs: Any) -> AugmentPipe:
        """Build a named pipeline (``AUGMENT_PRESETS``); ``kwargs`` override strengths or ``pad_mode``.

        Raises:
            ValueError: unknown preset name; the message lists the known ones.
        """
        if name not in AUGMENT_PRESETS:
            raise ValueError(f"unknown augment preset {name!r}; known presets: {sorted(AUGMENT_PRESETS)}")
        return cls(**{**AUGMENT_PRESETS[name], **kwargs})

    def _prob(self, op: str) -> torch.Tensor:
        return (self.p * self.weights[op]).clamp(0, 1)

    def _mask(self, op: str, n: int, device: torch.device) -> torch.Tensor:
        """[n] bool: which samples apply ``op`` this call."""
        return torch.rand(n, device=device) < self._prob(op)

    # ------------------------------------------------------------------------------------------------------
    def _geometric(self, x: torch.Tensor) -> torch.Tensor:
        """Flip, rotate by k·90°, translate by whole pixels: one index map per sample, one gather."""
        N, C, H, W = x.shape
        dev = x.device
        zero = torch.zeros(N, dtype=torch.long, device=dev)
        flip = torch.where(self._mask("xflip", N, dev), torch.randint(0, 2, [N], device=dev), zero)
        rot = torch.where(self._mask("rotate90", N, dev), torch.randint(0, 4, [N], device=dev), zero)
        t_max = self.xint_max
        txy = torch.round((torch.rand(N, 2, device=dev) * 2 - 1) * t_max * torch.tensor([W, H], device=dev))
        txy = torch.where(self._mask("xint", N, dev).unsqueeze(1), txy.long(), torch.zeros_like(txy.long()))
        if not (flip.any() or rot.any() or txy.any()):
            return x
        # Doubled, centred integer coordinates of every output pixel: u = 2j - (W-1), v = 2i - (H-1).
        v, u = torch.meshgrid(
            torch.arange(H, device=dev) * 2 - (H - 1), torch.arange(W, device=dev) * 2 - (W - 1), indexing="ij"
        )
        u = u.unsqueeze(0) - 2 * txy[:, 0].reshape(N, 1, 1)  # [N, H, W]
        v = v.unsqueeze(0) - 2 * txy[:, 1].reshape(N, 1, 1)
        u = torch.where(flip.reshape(N, 1, 1) == 1, -u, u)
        cos = torch.tensor([1, 0, -1, 0], device=dev)[rot].reshape(N, 1, 1)
        sin = torch.tensor([0, 1, 0, -1], device=dev)[rot].reshape(N, 1, 1)
        u, v = cos * u - sin * v, sin * u + cos * v
        j, i = (u + (W - 1)) // 2, (v + (H - 1)) // 2
        if self.pad_mode == "wrap":
            j, i = torch.remainder(j, W), torch.remainder(i, H)
        else:
            j, i = _reflect_index(j, W), _reflect_index(i, H)
        index = (i * W + j).reshape(N, 1, H * W).expand(N, C, H * W)
        return x.reshape(N, C, H * W).gather(2, index).reshape(N, C, H, W)

    def _colour(self, x: torch.Tensor) -> torch.Tensor:
        """Brightness, contrast, hue, saturation composed into one [N, 4, 4] affine colour matrix."""
        N, C, H, W = x.shape
        dev = x.device
        b = torch.where(self._mask("brightness", N, dev), torch.randn(N, device=dev) * self.brightness_std, 0.0)
        c = torch.where(self._mask("contrast", N, dev), torch.exp2(torch.randn(N, device=dev) * self.contrast_std), 1.0)
        theta = torch.where(
            self._mask("hue", N, dev), (torch.rand(N, device=dev) * 2 - 1) * math.pi * self.hue_max, 0.0
        )
        s = torch.where(
            self._mask("saturation", N, dev), torch.exp2(torch.randn(N, device=dev) * self.saturation_std), 1.0
        )
        if not ((b != 0).any() or (c != 1).any() or (theta != 0).any() or (s != 1).any()):
            return x
        if C != 3:
            raise ValueError(f"AugmentPipe colour ops need 3-channel images, received {C} channels")
        eye = torch.eye(4, device=dev).expand(N, 4, 4)
        M = eye.clone()
        M[:, :3, 3] += b.reshape(N, 1)  # brightness: translate along all channels
        M = (eye * torch.cat([c.reshape(N, 1).expand(N, 3), torch.ones(N, 1, device=dev)], 1).unsqueeze(1)) @ M
        R = eye.clone()
        R[:, :3, :3] = _rotation_about_luma(theta)
        M = R @ M
        luma = torch.full([3, 1], 1 / math.sqrt(3), device=dev)
        proj = luma @ luma.T  # projection onto the grey axis
        S = eye.clone()
        S[:, :3, :3] = proj + (torch.eye(3, device=dev) - proj) * s.reshape(N, 1, 1)
        M = S @ M
        y = M[:, :3, :3] @ x.reshape(N, 3, H * W) + M[:, :3, 3:]
        return y.reshape(N, 3, H, W)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Augment a batch ``[N, C, R, R]``; identity (same tensor) when ``p == 0``."""
        assert x.ndim == 4 and x.shape[2] == x.shape[3], f"x: expected [N, C, R, R], received {tuple(x.shape)}"
        if float(self.p) <= 0:
            return x
        x = self._geometric(x)
        return self._colour(x)


class AdaController:
    """Tunes ``AugmentPipe.p`` from the discriminator's overfitting heuristic r_t = E[sign(D(real))].

    Every ``interval`` minibatches: p += sign(r_t − target) · (images seen in the interval) / (ada_kimg·1000),
    clamped to [0, 1]. With batch 16, interval 4, ada_kimg 500, p moves by 1.28e-4 per adjustment, i.e. it can
    go from 0 to 1 in 500k images.
    """

    def __init__(
        self,
        augment_pipe: AugmentPipe,  # pipeline whose ``p`` buffer this controller owns
        target: float = 0.6,  # desired r_t; above it D is overconfident on reals → augment more
        interval: int = 4,  # minibatches between adjustments
        ada_kimg: float = 500.0,  # thousands of images for p to move by 1
    ) -> None:
        if interval < 1:
            raise ValueError(f"AdaController.interval: expected >= 1, received {interval!r}")
        if ada_kimg <= 0:
            raise ValueError(f"AdaController.ada_kimg: expected > 0, received {ada_kimg!r}")
        self.pipe, self.target, self.interval, self.ada_kimg = augment_pipe, target, interval, ada_kimg
        self._sign_sum = 0.0  # sum of sign(D(real)) since the last adjustment
        self._count = 0  # real images since the last adjustment
        self._batches = 0  # minibatches since the last adjustment
        self.rt: float | None = None  # r_t measured at the last adjustment

    @property
    def p(self) -> float:
        return float(self.pipe.p)

    def update(self, real_logits: torch.Tensor) -> float:
        """Record D's logits on one minibatch of reals; adjust p after every ``interval`` calls.

        Returns:
            The (possibly updated) augmentation probability p.
        """
        self._sign_sum += float(real_logits.detach().sign().sum())
        self._count += real_logits.numel()
        self._batches += 1
        if self._batches >= self.interval:
            self.rt = self._sign_sum / max(self._count, 1)
            adjust = math.copysign(1.0, self.rt - self.target) * self._count / (self.ada_kimg * 1000)
            if self.rt == self.target:
                adjust = 0.0
            self.pipe.p.copy_((self.pipe.p + adjust).clamp(0.0, 1.0))
            self._sign_sum, self._count, self._batches = 0.0, 0, 0
        return self.p

    def state_dict(self) -> dict[str, Any]:
        """Plain-python state for checkpoints (p itself lives in the pipe's state dict)."""
        return {"sign_sum": self._sign_sum, "count": self._count, "batches": self._batches, "rt": self.rt}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self._sign_sum = float(state["sign_sum"])
        self._count = int(state["count"])
        self._batches = int(state["batches"])
        self.rt = None if state["rt"] is None else float(state["rt"])
