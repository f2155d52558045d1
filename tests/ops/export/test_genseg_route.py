"""The GenSeg export route: a pair is reproducible from its seed alone, and a bank of another size is refused."""

import numpy as np
import pytest
import torch

from ops.diffusion.mask_bank import MaskBank
from ops.export.genseg_route import synthesize_genseg_pairs
from ops.genseg.augment import MaskAugmentConfig, apply_transforms
from ops.genseg.networks import GenSegConfig, SearchableGenerator

TINY = GenSegConfig(n_classes=3, resolution=16, base_channels=4, channel_max=8, depth=2, disc_channels=4)


def _bank(size: int) -> MaskBank:
    masks = np.zeros((2, size, size), np.uint8)
    masks[0, 2:8, 2:10] = 1
    masks[1, 5:, :6] = 2
    return MaskBank.from_masks(masks, 3)


def test_pairs_are_reproducible_per_seed_and_follow_the_stored_transforms():
    torch.manual_seed(0)
    g = SearchableGenerator(TINY).eval()
    bank = _bank(16)
    out = synthesize_genseg_pairs(g, bank, np.array([5, 6, 7]), MaskAugmentConfig())
    assert out.images.shape == (3, 16, 16, 3) and out.masks.shape == (3, 16, 16)
    assert set(np.unique(out.masks).tolist()) <= {0, 1, 2}
    alone = synthesize_genseg_pairs(g, bank, np.array([6]), MaskAugmentConfig())
    np.testing.assert_array_equal(alone.images[0], out.images[1])
    np.testing.assert_array_equal(alone.masks[0], out.masks[1])
    rebuilt = apply_transforms(bank.sample(out.seeds), out.latent_arrays()["transforms"])
    np.testing.assert_array_equal(rebuilt, out.masks)


def test_a_bank_of_another_resolution_is_refused():
    with pytest.raises(ValueError, match="16-px masks, the GenSeg generator paints 32-px"):
        synthesize_genseg_pairs(
            SearchableGenerator(GenSegConfig(n_classes=3, resolution=32, depth=2)),
            _bank(16),
            np.array([1]),
            MaskAugmentConfig(),
        )
