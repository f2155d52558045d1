"""Dice + cross-entropy: equals MONAI's DiceCELoss without ignored pixels, and ignores unannotated ones."""

from __future__ import annotations

import pytest
import torch
from monai.losses import DiceCELoss

from ops.evaluation.losses import dice_ce_loss, segmentation_loss


def test_dice_ce_equals_monai_dicece_without_ignored_pixels() -> None:
    gen = torch.Generator().manual_seed(0)
    logits, y = torch.randn(3, 4, 8, 8, generator=gen), torch.randint(0, 4, (3, 8, 8), generator=gen)
    reference = DiceCELoss(to_onehot_y=True, softmax=True, batch=True)(logits, y.unsqueeze(1))
    assert dice_ce_loss(logits, y).item() == pytest.approx(reference.item(), rel=1e-5)


def test_ignored_pixels_change_nothing() -> None:
    gen = torch.Generator().manual_seed(1)
    logits, y = torch.randn(2, 3, 8, 8, generator=gen), torch.randint(0, 3, (2, 8, 8), generator=gen)
    y_ignored = y.clone()
    y_ignored[:, :, 4:] = 255
    other = logits.clone()
    other[:, :, :, 4:] = torch.randn(2, 3, 8, 4, generator=gen)  # logits on ignored pixels differ
    assert dice_ce_loss(logits, y_ignored).item() == pytest.approx(dice_ce_loss(other, y_ignored).item(), rel=1e-5)
    assert segmentation_loss(logits, torch.full_like(y, 255)).item() == 0
    with pytest.raises(ValueError, match="loss: expected one of"):
        segmentation_loss(logits, y, "focal")
