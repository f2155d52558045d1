"""Synthetic image-mask pairs from GenSeg: a mask from the bank, augmented (rotation, flip, scale), then painted.

As in the LDM route the label comes first, so there is no classifier uncertainty; the export still runs the
memorization check and scores fidelity. A pair is reproducible from its seed: the seed draws the bank's mask (with the
requested class balance), the similarity transform applied to it and the generator's noise. The transforms are
stored (``genseg_latents.npz``: ``seeds``, ``transforms``) so a mask can be rebuilt without re-drawing.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import torch

from ops.diffusion.mask_bank import MaskBank
from ops.genseg.augment import MaskAugmentConfig, apply_transforms, draw_transforms
from ops.genseg.networks import SearchableGenerator, noise_for_seeds, to_uint8


@dataclass
class GenSegBatch:
    """Generated pairs of one export batch (all arrays share the sample axis)."""

    seeds: np.ndarray  # int64 [B]
    masks: np.ndarray  # uint8 [B, R, R], bank mask under the seed's transform
    images: np.ndarray  # uint8 [B, R, R, 3]
    transforms: np.ndarray  # float32 [B, 2, 3], the similarity transform applied to the bank mask

    def latent_arrays(self) -> dict[str, np.ndarray]:
        """What regenerates the batch (``genseg_latents.npz`` in the export)."""
        return {"seeds": self.seeds, "transforms": self.transforms}


@torch.no_grad()
def synthesize_genseg_pairs(
    generator: SearchableGenerator,
    bank: MaskBank,
    seeds: np.ndarray,
    augment: MaskAugmentConfig,
    class_weights: Mapping[int, float] | None = None,
    batch: int = 32,
) -> GenSegBatch:
    """Masks for ``seeds`` (bank + augmentation), then the generator's images of them.

    Args:
        generator: ``ops.genseg.networks.load_generator``'s model (on the device to paint on).
        bank: The mask bank; its resolution must equal the generator's.
        seeds: One seed per pair.
        augment: The augmentation the generator was trained with (stored in its file's metadata).
        class_weights: Class id -> multiple of its pixel share in the real masks.
        batch: Masks painted together.
    """
    if bank.resolution != generator.cfg.resolution:
        raise ValueError(
            f"the mask bank holds {bank.resolution}-px masks, the GenSeg generator paints "
            f"{generator.cfg.resolution}-px images; rebuild the bank at the generator's resolution"
        )
    if bank.n_classes != generator.cfg.n_classes:
        raise ValueError(
            f"the mask bank has {bank.n_classes} classes, the GenSeg generator {generator.cfg.n_classes}; "
            "retrain genseg_model on the bank's class map"
        )
    seeds = np.asarray(seeds, np.int64)
    transforms = np.concatenate([draw_transforms(np.random.default_rng(int(s)), 1, augment) for s in seeds])
    masks = apply_transforms(bank.sample(seeds, class_weights), transforms)
    noise = noise_for_seeds(seeds, generator.cfg)
    device = next(generator.parameters()).device
    images = np.empty((*masks.shape, 3), np.uint8)
    for start in range(0, len(seeds), batch):
        m = torch.from_numpy(masks[start : start + batch]).long().to(device)
        z = noise[start : start + batch].to(device) if noise is not None else None
        images[start : start + batch] = to_uint8(generator.paint(m, z))
    return GenSegBatch(seeds, masks, images, transforms)
