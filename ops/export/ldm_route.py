"""Synthetic image-mask pairs from the mask-conditioned LDM: masks from the bank, images generated to fit them.

Unlike the GAN route, the label comes first, so there is no classifier uncertainty to filter on; the export still
runs the memorization check on these images. A pair is reproducible from its seed: the seed draws the mask from the
bank (with the requested class balance) and the starting noise of deterministic DDIM / SC sampling.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import torch

from ops.diffusion.autoencoder import Autoencoder, decode
from ops.diffusion.denoiser import MaskConditionedUNet
from ops.diffusion.mask_bank import MaskBank
from ops.diffusion.samplers import sample_latents


@dataclass
class LdmBatch:
    """Generated pairs of one export batch (all arrays share the sample axis)."""

    seeds: np.ndarray  # int64 [B]
    masks: np.ndarray  # uint8 [B, R, R], drawn from the mask bank
    images: np.ndarray  # uint8 [B, R, R, 3]
    latents: np.ndarray  # float16 [B, C, h, w], the denoised latents the images were decoded from

    def latent_arrays(self) -> dict[str, np.ndarray]:
        """What regenerates or re-decodes the batch (``ldm_latents.npz`` in the export)."""
        return {"seeds": self.seeds, "latents": self.latents}


def latents_to_uint8(ae: Autoencoder, z: torch.Tensor, scale: float) -> np.ndarray:
    """Decode latents to ``uint8 [B, R, R, 3]`` images."""
    with torch.no_grad():
        x = decode(ae, z, scale)
    return x.permute(0, 2, 3, 1).add(1).mul(127.5).round().clamp(0, 255).byte().cpu().numpy()


def synthesize_ldm_pairs(
    denoiser: MaskConditionedUNet,
    ae: Autoencoder,
    scale: float,
    bank: MaskBank,
    seeds: np.ndarray,
    class_weights: Mapping[int, float] | None = None,
    sampler: str = "ddim",
    steps: int = 20,
    guidance: float = 1.0,
    batch: int = 32,
) -> LdmBatch:
    """Masks for ``seeds`` from the bank, then images generated from them.

    Args:
        denoiser: The LDM (``ops.diffusion.denoiser.load_denoiser``).
        ae: Its autoencoder and latent ``scale`` (``ops.diffusion.autoencoder.load_autoencoder``).
        bank: The mask bank; its resolution must equal the denoiser's.
        seeds: One seed per pair.
        class_weights: Class id -> multiple of its pixel share in the real masks (3.0 = three times as much).
        sampler: ``ddim`` or ``sc`` (separated conditions).
        steps: DDIM steps.
        guidance: Classifier-free guidance scale (1 = off).
        batch: Masks denoised together.
    """
    if bank.resolution != denoiser.cfg.resolution:
        raise ValueError(
            f"the mask bank holds {bank.resolution}-px masks, the LDM generates "
            f"{denoiser.cfg.resolution}-px images; rebuild the bank at the LDM's resolution"
        )
    seeds = np.asarray(seeds, np.int64)
    masks = bank.sample(seeds, class_weights)
    z = sample_latents(denoiser, torch.from_numpy(masks).long(), seeds, sampler, steps, guidance, batch)
    return LdmBatch(seeds, masks, latents_to_uint8(ae, z, scale), z.cpu().half().numpy())
