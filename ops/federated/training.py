"""Losses, augmentation and the local training loop of the conditional GANs (what one site runs per round).

Three objectives, as in the federated-GAN paper: cGAN (non-saturating BCE on a class-projected score), WGAN-GP
(critic score with a gradient penalty, ``n_critic`` critic steps per generator step) and ACGAN (BCE real/fake plus
cross-entropy on D's auxiliary class head for real *and* fake images, so G is pushed to make its class
recognisable). Augmentation follows the paper: random crops, horizontal flips and affine rotations up to 45°.

A site keeps its optimiser state to itself: each round starts fresh Adam moments from the global weights, which
is what FedAvg averages (weights, not optimiser state).
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from ops.common.file_io import read_torch_file
from ops.federated.networks import CondDiscriminator, CondGanConfig, CondGenerator
from ops.federated.runtime import MODEL_FORMAT

# ----------------------------------------------------------------------------------------------------------
# Augmentation.


def augment(x: torch.Tensor, generator: torch.Generator, max_degrees: float = 45.0, crop: float = 0.85) -> torch.Tensor:
    """Random crop (rescaled back to size), horizontal flip and rotation up to ``max_degrees``, per image.

    One composed affine grid per image, so the batch is transformed in a single ``grid_sample`` (reflection padding
    keeps rotated corners looking like tissue rather than black).
    """
    n = x.shape[0]
    u = torch.rand(n, 4, generator=generator)
    angle = (u[:, 0] * 2 - 1) * math.radians(max_degrees)
    scale = crop + (1 - crop) * u[:, 1]  # crop side as a share of the image
    flip = torch.where(u[:, 2] < 0.5, -1.0, 1.0)
    shift = (1 - scale) * (u[:, 3] * 2 - 1)
    cos, sin = torch.cos(angle) * scale, torch.sin(angle) * scale
    theta = torch.stack(
        [torch.stack([cos * flip, -sin, shift], 1), torch.stack([sin * flip, cos, shift.flip(0)], 1)], 1
    ).to(x)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="reflection", align_corners=False)


# ----------------------------------------------------------------------------------------------------------
# Losses.


def gradient_penalty(D: CondDiscriminator, real: torch.Tensor, fake: torch.Tensor, y: torch.Tensor, eps: torch.Tensor):
    """WGAN-GP: mean over samples of (||∇_x̂ D(x̂, y)||₂ − 1)², x̂ = eps·real + (1 − eps)·fake, eps ``[N, 1, 1, 1]``."""
    mixed = (eps * real + (1 - eps) * fake).requires_grad_(True)
    score, _ = D(mixed, y)
    (grad,) = torch.autograd.grad(score.sum(), mixed, create_graph=True)
    return ((grad.flatten(1).norm(dim=1) - 1) ** 2).mean()


def d_loss(D: CondDiscriminator, real: torch.Tensor, fake: torch.Tensor, y: torch.Tensor, g: torch.Generator):
    """The discriminator's loss for one batch of real and fake images of classes ``y``, and its parts."""
    cfg = D.cfg
    s_real, c_real = D(real, y)
    s_fake, c_fake = D(fake, y)
    if cfg.loss == "wgan-gp":
        eps = torch.rand(real.shape[0], 1, 1, 1, generator=g).to(real)
        gp = gradient_penalty(D, real, fake, y, eps)
        wdist = s_real.mean() - s_fake.mean()
        return -wdist + cfg.gp_lambda * gp, {"d_wdist": wdist.item(), "d_gp": gp.item()}
    adv = F.softplus(-s_real).mean() + F.softplus(s_fake).mean()
    if cfg.loss == "acgan":
        aux = F.cross_entropy(c_real, y) + F.cross_entropy(c_fake, y)
        return adv + aux, {"d_adv": adv.item(), "d_aux": aux.item()}
    return adv, {"d_adv": adv.item()}


def g_loss(D: CondDiscriminator, fake: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]:
    """The generator's loss for fakes of classes ``y``; ACGAN adds the auxiliary class cross-entropy."""
    score, logits = D(fake, y)
    adv = -score.mean() if D.cfg.loss == "wgan-gp" else F.softplus(-score).mean()
    if D.cfg.loss == "acgan":
        aux = F.cross_entropy(logits, y)
        return adv + aux, {"g_adv": adv.item(), "g_aux": aux.item()}
    return adv, {"g_adv": adv.item()}


# ----------------------------------------------------------------------------------------------------------
# Local training (one site, one round).


@dataclass(frozen=True)
class LocalTraining:
    """How long and how a site trains per round."""

    epochs: float = 1.0  # passes over the site's tiles per round (fractions allowed for tiny runs)
    batch_size: int = 16  # images per step
    augment: bool = True  # crops, flips, affine up to 45° on real and fake images (the paper's)
    seed: int = 0  # seeds noise, batches and augmentation


def to_tensor_images(images: np.ndarray) -> torch.Tensor:
    """``uint8 [N, R, R, 3]`` -> ``float [N, 3, R, R]`` in [-1, 1]."""
    assert images.ndim == 4 and images.shape[3] == 3 and images.dtype == np.uint8, f"got {images.dtype} {images.shape}"
    return torch.from_numpy(images).permute(0, 3, 1, 2).float() / 127.5 - 1.0


def to_uint8_images(x: torch.Tensor) -> np.ndarray:
    """``float [N, 3, R, R]`` in [-1, 1] -> ``uint8 [N, R, R, 3]``."""
    return ((x.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()


def train_local(
    G: CondGenerator, D: CondDiscriminator, images: np.ndarray, labels: np.ndarray, run: LocalTraining
) -> dict[str, float]:
    """Train G and D in place on one site's tiles; returns mean losses and the step count.

    Args:
        G, D: The networks (updated in place).
        images: ``uint8 [N, R, R, 3]`` the site's tiles at the GAN's resolution.
        labels: ``int64 [N]`` their classes.
        run: Epochs, batch size, augmentation, seed.
    """
    cfg = G.cfg
    if len(images) != len(labels) or len(images) == 0:
        raise ValueError(f"expected as many labels as images (> 0), received {len(images)} images, {len(labels)}")
    g = torch.Generator().manual_seed(run.seed)
    x_all, y_all = to_tensor_images(images), torch.as_tensor(labels, dtype=torch.int64)
    opt_g = torch.optim.Adam(G.parameters(), lr=cfg.lr, betas=(0.5, 0.999))
    opt_d = torch.optim.Adam(D.parameters(), lr=cfg.lr, betas=(0.5, 0.999))
    steps = max(1, int(round(run.epochs * len(images) / run.batch_size)))
    sums: dict[str, float] = {}
    counts: dict[str, int] = {}
    G.train()
    D.train()
    for step in range(steps):
        idx = torch.randint(0, len(images), (run.batch_size,), generator=g)
        real, y = x_all[idx], y_all[idx]
        if run.augment:
            real = augment(real, g)
        z = torch.randn(run.batch_size, cfg.z_dim, generator=g)
        with torch.no_grad():
            fake = G(z, y)
        loss, parts = d_loss(D, real, fake, y, g)
        opt_d.zero_grad(set_to_none=True)
        loss.backward()
        opt_d.step()
        for k, v in parts.items():
            sums[k], counts[k] = sums.get(k, 0.0) + v, counts.get(k, 0) + 1
        if cfg.loss == "wgan-gp" and (step + 1) % cfg.n_critic:
            continue  # the critic takes n_critic steps per generator step
        z = torch.randn(run.batch_size, cfg.z_dim, generator=g)
        fake = G(z, y)
        loss, parts = g_loss(D, augment(fake, g) if run.augment else fake, y)
        opt_g.zero_grad(set_to_none=True)
        loss.backward()
        opt_g.step()
        for k, v in parts.items():
            sums[k], counts[k] = sums.get(k, 0.0) + v, counts.get(k, 0) + 1
    return {**{k: v / counts[k] for k, v in sums.items()}, "steps": float(steps)}


@torch.no_grad()
def sample(G: CondGenerator, labels: np.ndarray, seed: int, batch: int = 64) -> np.ndarray:
    """Images of the requested classes, ``uint8 [N, R, R, 3]``, reproducible from ``seed``."""
    G.eval()
    g = torch.Generator().manual_seed(seed)
    y_all = torch.as_tensor(labels, dtype=torch.int64)
    out = []
    for start in range(0, len(y_all), batch):
        y = y_all[start : start + batch]
        out.append(to_uint8_images(G(torch.randn(len(y), G.cfg.z_dim, generator=g), y)))
    return np.concatenate(out) if out else np.zeros((0, G.cfg.resolution, G.cfg.resolution, 3), np.uint8)


def build(cfg: CondGanConfig, seed: int) -> tuple[CondGenerator, CondDiscriminator]:
    """A fresh generator/discriminator pair, identical for every caller with the same seed (the global start)."""
    torch.manual_seed(seed)
    return CondGenerator(cfg), CondDiscriminator(cfg)


def load_global_generator(path: str | os.PathLike[str]) -> CondGenerator:
    """The federation's global generator from the ServerApp's model file (config + state dict), in eval mode.

    Raises:
        CheckpointError: the file is missing, corrupt or not a federated-GAN model; the message names it.
    """
    payload = read_torch_file(
        path, [MODEL_FORMAT], ["config", "G"], "federated GAN model", "rematerialize federated_gan"
    )
    G = CondGenerator(CondGanConfig.from_dict(payload["config"]))
    G.load_state_dict(payload["G"])
    return G.eval()
