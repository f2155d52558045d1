"""LDM pairs for the export: masks from the bank, images decoded from DDIM/SC latents, reproducible per seed."""

from __future__ import annotations

import numpy as np
import pytest

from ops.diffusion.autoencoder import AutoencoderConfig, build_autoencoder
from ops.diffusion.denoiser import LdmConfig, MaskConditionedUNet
from ops.diffusion.mask_bank import MaskBank, shares
from ops.export.ldm_route import synthesize_ldm_pairs

AE = AutoencoderConfig(kind="kl", resolution=32, block_out_channels=(8, 16, 16), norm_num_groups=4)
LDM = LdmConfig(
    n_classes=3,
    resolution=32,
    latent_size=8,
    block_out_channels=(16, 32),
    attention_levels=(False, True),
    norm_num_groups=8,
    mask_token_size=4,
    mask_embed_dim=16,
)


@pytest.fixture(scope="module")
def parts() -> tuple[MaskConditionedUNet, object, MaskBank]:
    """Untrained networks (the sampling path does not care) and a bank with a rare class 2 (small discs)."""
    rng = np.random.default_rng(0)
    masks = np.zeros((24, 32, 32), np.uint8)
    masks[:, :, 16:] = 1
    yy, xx = np.mgrid[:32, :32]
    for m in masks[:8]:
        cy, cx = rng.integers(4, 28, 2)
        m[(yy - cy) ** 2 + (xx - cx) ** 2 <= 4] = 2
    denoiser = MaskConditionedUNet(LDM).eval().requires_grad_(False)
    return denoiser, build_autoencoder(AE).eval().requires_grad_(False), MaskBank.from_masks(masks, 3, min_area=1)


def test_pairs_are_shaped_and_reproducible_per_seed(parts) -> None:
    denoiser, ae, bank = parts
    seeds = np.arange(100, 106)
    a = synthesize_ldm_pairs(denoiser, ae, 1.0, bank, seeds, steps=2)
    assert a.images.shape == (6, 32, 32, 3) and a.images.dtype == np.uint8
    assert a.masks.shape == (6, 32, 32) and a.latents.shape == (6, 4, 8, 8)
    np.testing.assert_array_equal(a.masks, bank.sample(seeds))
    b = synthesize_ldm_pairs(denoiser, ae, 1.0, bank, seeds, steps=2)
    np.testing.assert_array_equal(a.images, b.images)
    assert set(a.latent_arrays()) == {"seeds", "latents"}
    sc = synthesize_ldm_pairs(denoiser, ae, 1.0, bank, seeds[:2], sampler="sc", steps=2)
    assert sc.images.shape == (2, 32, 32, 3)


def test_class_weights_oversample_the_rare_class(parts) -> None:
    denoiser, ae, bank = parts
    seeds = np.arange(40)
    plain = synthesize_ldm_pairs(denoiser, ae, 1.0, bank, seeds, steps=1)
    boosted = synthesize_ldm_pairs(denoiser, ae, 1.0, bank, seeds, {2: 3.0}, steps=1)
    assert shares(boosted.masks, 3)[2] > 2 * shares(plain.masks, 3)[2]


def test_bank_at_another_resolution_is_refused(parts) -> None:
    denoiser, ae, _ = parts
    small = MaskBank.from_masks(np.zeros((2, 16, 16), np.uint8) + np.eye(16, dtype=np.uint8), 3, min_area=1)
    with pytest.raises(ValueError, match="16-px masks, the LDM generates 32-px images"):
        synthesize_ldm_pairs(denoiser, ae, 1.0, small, np.arange(2))
