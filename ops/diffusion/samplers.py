"""Sampling the mask-conditioned LDM: plain DDIM and DISC's separated-conditions (SC) sampler.

- :func:`ddim_sample` — deterministic DDIM (eta = 0) with a configurable step count (DISC: 200; the demo: ~20),
  optional classifier-free guidance. Image i starts from noise drawn from ``seeds[i]`` alone, so a seed always
  gives the same sample for the same mask.
- :func:`sc_sample` — DISC's denoising process with Separated Conditions (Sec. 2.3, Fig. 4 bottom): the starting
  noise z_T is duplicated once per class k present in the mask, each copy is denoised **all the way to t = 0** under
  the uniform one-class mask sm_k (every pixel "class k"), and the final latents are fused **once** by Eq. 2,
  ``z_0^mixed = sum_k z_0^k * m_k``, where m_k are the binary class regions of the mask downsampled to the latent
  grid with nearest-neighbour interpolation. Each trajectory sees only "this is class k", so it draws the class
  with the confidence of a single-class tile; the price is K trajectories per image. Cells with no class (255)
  take an unconditional (null-condition) trajectory of the same noise.
- :func:`separated_latents` — the z_0^k of every class for a seed set: what DISC's self-distillation stores
  (``ops.diffusion.distill``) and fuses under random masks.

The project first shipped a different algorithm as ``sc`` (one latent; the per-class noise predictions blended by
the mask at every step). ``bench/ldm.py --parts disc`` measured it below DISC's SC (fidelity 0.184 vs 0.260 at
guidance 4, 32 pairs), so it was removed.

Tensor layouts as in ``ops.diffusion.denoiser``: masks ``[B, R, R]`` class ids, latents ``[B, C, h, w]``.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from diffusers import DDIMScheduler

from ops.diffusion.denoiser import MaskConditionedUNet, mask_onehot
from ops.labelling.class_maps import IGNORE_INDEX

SAMPLERS = ("ddim", "sc")
NULL_LABEL = IGNORE_INDEX  # the label of an unconditional trajectory: it fills the mask's unlabelled cells


def _ddim(model: MaskConditionedUNet, steps: int) -> DDIMScheduler:
    if steps < 1 or steps > model.cfg.num_train_timesteps:
        raise ValueError(f"sampling steps: expected 1..{model.cfg.num_train_timesteps}, received {steps}")
    scheduler = DDIMScheduler.from_config(model.cfg.scheduler().config)
    scheduler.set_timesteps(steps)
    return scheduler


def initial_noise(model: MaskConditionedUNet, seeds: np.ndarray, device: torch.device | str) -> torch.Tensor:
    """Per-seed starting latents ``[B, C, h, w]``: noise i depends on ``seeds[i]`` only (drawn on the CPU)."""
    cfg = model.cfg
    shape = (cfg.latent_channels, cfg.latent_size, cfg.latent_size)
    noise = [torch.randn(shape, generator=torch.Generator("cpu").manual_seed(int(s))) for s in seeds]
    return torch.stack(noise).to(device)


def _guided(
    model: MaskConditionedUNet, z: torch.Tensor, t: torch.Tensor, cond: torch.Tensor, guidance: float
) -> torch.Tensor:
    """Noise prediction with classifier-free guidance: ``eps_null + g * (eps_cond - eps_null)`` (g = 1: off)."""
    if guidance == 1.0:
        return model(z, t.expand(z.shape[0]), cond)
    both = model(torch.cat([z, z]), t.expand(2 * z.shape[0]), torch.cat([cond, torch.zeros_like(cond)]))
    eps_cond, eps_null = both.chunk(2)
    return eps_null + guidance * (eps_cond - eps_null)


def _denoise(
    model: MaskConditionedUNet, z: torch.Tensor, cond: torch.Tensor, steps: int, guidance: float
) -> torch.Tensor:
    """Deterministic DDIM (eta = 0) from ``z`` = z_T to z_0 under a fixed condition ``[N, K, R, R]``."""
    scheduler = _ddim(model, steps)
    for t in scheduler.timesteps:
        eps = _guided(model, z, t.to(z.device), cond, guidance)
        z = scheduler.step(eps, t, z, eta=0.0).prev_sample
    return z


def _check_masks(model: MaskConditionedUNet, masks: torch.Tensor, seeds: np.ndarray) -> None:
    r = model.cfg.resolution
    if masks.ndim != 3 or masks.shape[1:] != (r, r):
        raise ValueError(f"masks: expected [B, {r}, {r}] class ids, received {tuple(masks.shape)}")
    if len(seeds) != masks.shape[0]:
        raise ValueError(f"expected one seed per mask, received {len(seeds)} seeds for {masks.shape[0]} masks")


@torch.no_grad()
def ddim_sample(
    model: MaskConditionedUNet, masks: torch.Tensor, seeds: np.ndarray, steps: int = 20, guidance: float = 1.0
) -> torch.Tensor:
    """Latents for ``masks`` with deterministic DDIM.

    Args:
        model: The denoiser (EMA weights, eval mode).
        masks: ``[B, R, R]`` class ids (255 = no condition at that pixel).
        seeds: One seed per mask; seeds the starting noise.
        steps: DDIM steps (1..T).
        guidance: Classifier-free guidance scale; 1 = plain conditional sampling (one UNet pass per step).

    Returns:
        ``[B, C, h, w]`` latents, to be decoded by the autoencoder.
    """
    _check_masks(model, masks, seeds)
    device = next(model.parameters()).device
    cond = mask_onehot(masks.to(device), model.cfg.n_classes)
    return _denoise(model, initial_noise(model, seeds, device), cond, steps, guidance)


# ----------------------------------------------------------------------------------------------------------
# Separated conditions (DISC Sec. 2.3).


def latent_mask(masks: torch.Tensor, latent_size: int) -> torch.Tensor:
    """``[B, R, R]`` class ids -> ``[B, h, w]`` at latent resolution by nearest-neighbour interpolation (DISC)."""
    return F.interpolate(masks[:, None].float(), size=latent_size, mode="nearest")[:, 0].long()


def uniform_conditions(labels: torch.Tensor, n_classes: int, resolution: int) -> torch.Tensor:
    """The separated masks sm_k as conditions ``[N, K, R, R]``: every pixel of row j is class ``labels[j]``;
    :data:`NULL_LABEL` rows get the all-zero (unconditional) condition."""
    valid = labels != NULL_LABEL
    onehot = F.one_hot(torch.where(valid, labels, 0), n_classes).float() * valid[:, None].float()
    return onehot[:, :, None, None].expand(-1, -1, resolution, resolution).contiguous()


def fuse(latents: torch.Tensor, owner: torch.Tensor, labels: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
    """DISC's Eq. 2: ``z^mixed_i = sum_k z^k_i * m_k``, the trajectories' latents cut by the mask's class regions.

    Args:
        latents: ``[N, C, h, w]`` one latent per trajectory.
        owner: ``[N]`` the image (row of ``masks``) each trajectory belongs to.
        labels: ``[N]`` the class each trajectory was denoised under, or :data:`NULL_LABEL` for an unconditional
            one (it fills the cells whose class is 255).
        masks: ``[B, R, R]`` class ids at image resolution; downsampled to ``h x w`` with nearest neighbour.

    Returns:
        ``[B, C, h, w]``: in each latent cell, the latent of the trajectory of that cell's class.

    Raises:
        ValueError: a latent cell whose class has no trajectory (or two), or mismatched shapes.
    """
    n, _, h, w = latents.shape
    if owner.shape != (n,) or labels.shape != (n,) or masks.ndim != 3:
        raise ValueError(
            f"fuse: expected latents [N, C, h, w] with owner [N] and labels [N], masks [B, R, R]; received "
            f"{tuple(latents.shape)}, {tuple(owner.shape)}, {tuple(labels.shape)}, {tuple(masks.shape)}"
        )
    small = latent_mask(masks, h).to(latents.device)
    region = (small[owner] == labels[:, None, None].to(latents.device)).to(latents.dtype)  # m_k per trajectory
    cover = torch.zeros(masks.shape[0], h, w, dtype=latents.dtype, device=latents.device).index_add_(0, owner, region)
    if not torch.all(cover == 1):
        bad = torch.nonzero((cover != 1).flatten(1).any(1)).flatten()[:10].tolist()
        raise ValueError(
            f"fuse: latent cells of masks {bad} are covered by {sorted(torch.unique(cover).tolist())} trajectories; "
            "expected exactly one trajectory per cell class (pass one per class present, and a null one for 255)"
        )
    out = torch.zeros(masks.shape[0], *latents.shape[1:], dtype=latents.dtype, device=latents.device)
    return out.index_add_(0, owner, latents * region[:, None])


def _present(small: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """One trajectory per (image, class present in its latent-resolution mask), classes ascending, 255 last."""
    b = small.shape[0]
    values = torch.arange(IGNORE_INDEX + 1, device=small.device)
    present = (small.flatten(1)[:, :, None] == values).any(1)  # [B, 256]
    owner, labels = torch.nonzero(present, as_tuple=True)
    assert owner.numel() >= b, "every mask has at least one cell"
    return owner, labels


@torch.no_grad()
def _trajectories(
    model: MaskConditionedUNet,
    seeds: np.ndarray,
    owner: torch.Tensor,
    labels: torch.Tensor,
    steps: int,
    guidance: float,
) -> torch.Tensor:
    """z_0 of trajectory j: seed ``seeds[owner[j]]``'s noise denoised under the uniform condition ``labels[j]``."""
    cfg = model.cfg
    device = next(model.parameters()).device
    z_t = initial_noise(model, seeds, device)[owner.to(device)]  # z_T duplicated once per separated condition
    cond = uniform_conditions(labels.to(device), cfg.n_classes, cfg.resolution)
    return _denoise(model, z_t, cond, steps, guidance)


@torch.no_grad()
def sc_sample(
    model: MaskConditionedUNet, masks: torch.Tensor, seeds: np.ndarray, steps: int = 20, guidance: float = 1.0
) -> torch.Tensor:
    """Latents for ``masks`` with DISC's separated-conditions sampler (see module docstring).

    Only the classes present in each image's latent-resolution mask get a trajectory (K_i per image, plus one
    unconditional trajectory where the mask has unlabelled cells), so a one-class mask costs exactly one DDIM run
    and gives plain DDIM's latent bit for bit. Same arguments and determinism as :func:`ddim_sample`.
    """
    _check_masks(model, masks, seeds)
    masks = masks.to(next(model.parameters()).device)
    owner, labels = _present(latent_mask(masks, model.cfg.latent_size))
    z0 = _trajectories(model, seeds, owner, labels, steps, guidance)
    return fuse(z0, owner, labels, masks)


@torch.no_grad()
def separated_latents(
    model: MaskConditionedUNet, seeds: np.ndarray, steps: int = 20, guidance: float = 1.0, batch: int = 8
) -> torch.Tensor:
    """z_0^k for every class k and seed: ``[S, K, C, h, w]``, the separated latents DISC stores for distillation.

    Args:
        model: The trained denoiser (the teacher: EMA weights, eval mode).
        seeds: ``[S]`` seeds of the starting noise z_T.
        steps: DDIM steps of each trajectory.
        guidance: Classifier-free guidance scale of each trajectory (1 = off).
        batch: Seeds denoised together (``batch * K`` trajectories per UNet call).
    """
    k = model.cfg.n_classes
    seeds = np.asarray(seeds, np.int64)
    chunks = []
    for i in range(0, len(seeds), batch):
        part = seeds[i : i + batch]
        owner = torch.arange(len(part)).repeat_interleave(k)
        labels = torch.arange(k).repeat(len(part))
        z0 = _trajectories(model, part, owner, labels, steps, guidance)
        chunks.append(z0.view(len(part), k, *z0.shape[1:]))
    return torch.cat(chunks)


def sample_latents(
    model: MaskConditionedUNet,
    masks: torch.Tensor,
    seeds: np.ndarray,
    sampler: str = "ddim",
    steps: int = 20,
    guidance: float = 1.0,
    batch: int = 32,
) -> torch.Tensor:
    """:func:`ddim_sample` or :func:`sc_sample` by name, in chunks of ``batch`` masks to bound memory."""
    samplers = {"ddim": ddim_sample, "sc": sc_sample}
    if sampler not in samplers:
        raise ValueError(f"sampler: unknown {sampler!r}; expected one of {SAMPLERS}")
    fn = samplers[sampler]
    chunks = [
        fn(model, masks[i : i + batch], seeds[i : i + batch], steps, guidance) for i in range(0, len(seeds), batch)
    ]
    return torch.cat(chunks)
