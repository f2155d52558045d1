"""GenSeg step 1: seeded rotation / flip / scaling of expert masks keeps class ids and fills every pixel."""

import numpy as np
import pytest

from ops.diffusion.mask_bank import MaskBank
from ops.genseg.augment import MaskAugmentConfig, apply_transforms, augment_masks, draw_transforms


def _masks() -> np.ndarray:
    masks = np.zeros((3, 32, 32), np.uint8)
    masks[:, 4:12, 4:20] = 2
    masks[1, 20:30, 10:30] = 4
    masks[2, :, :3] = 255  # unannotated strip
    return masks


def test_augmentation_is_seeded_keeps_class_ids_and_labels_every_pixel():
    masks, cfg = _masks(), MaskAugmentConfig()
    a = augment_masks(masks, 16, np.random.default_rng(3), cfg, n_classes=5)
    b = augment_masks(masks, 16, np.random.default_rng(3), cfg, n_classes=5)
    c = augment_masks(masks, 16, np.random.default_rng(4), cfg, n_classes=5)
    assert a.shape == (16, 32, 32) and a.dtype == np.uint8
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c), "another seed, other masks"
    assert set(np.unique(a).tolist()) <= {0, 2, 4}, "only the source's ids: nearest-neighbour, no 255"
    assert not all(np.array_equal(m, masks[0]) for m in a), "the masks are transformed"


def test_identity_transform_and_a_quarter_turn_are_exact():
    mask = np.arange(16 * 16, dtype=np.uint8).reshape(1, 16, 16) % 7
    eye = np.array([[[1, 0, 0], [0, 1, 0]]], np.float32)
    np.testing.assert_array_equal(apply_transforms(mask, eye), mask)
    quarter = np.array([[[0, -1, 0], [1, 0, 0]]], np.float32)
    turned = apply_transforms(mask, quarter)[0]
    assert any(np.array_equal(turned, np.rot90(mask[0], k)) for k in (1, 3))
    no_aug = MaskAugmentConfig(rotate=False, flip=False, scale_min=1.0, scale_max=1.0)
    np.testing.assert_allclose(draw_transforms(np.random.default_rng(0), 2, no_aug), np.repeat(eye, 2, axis=0))


def test_bank_share_pastes_shapes_and_bad_input_is_named():
    masks = _masks()
    bank = MaskBank.from_masks(masks, 5)
    cfg = MaskAugmentConfig(bank_share=1.0)
    out = augment_masks(masks, 8, np.random.default_rng(0), cfg, 5, bank=bank, class_weights={4: 3.0})
    base = augment_masks(masks, 8, np.random.default_rng(0), MaskAugmentConfig(), 5)
    assert (out == 4).mean() > (base == 4).mean(), "pasting raises the weighted class's share"
    with pytest.raises(ValueError, match="bank_share > 0 needs a mask bank"):
        augment_masks(masks, 2, np.random.default_rng(0), cfg, 5)
    with pytest.raises(ValueError, match=r"class ids \[4\] found but n_classes=3"):
        augment_masks(masks, 2, np.random.default_rng(0), MaskAugmentConfig(), 3)
    with pytest.raises(ValueError, match="scale_min <= scale_max"):
        MaskAugmentConfig(scale_min=2.0, scale_max=1.0)
