"""Segmentation losses: pixel cross-entropy, or MONAI's Dice + cross-entropy with unannotated pixels left out.

Dice counters class imbalance (a nucleus border covering 5 % of the pixels weighs as much as stroma), which plain
cross-entropy on a handful of crops does not. MONAI's ``DiceCELoss`` has no ``ignore_index``, and expert masks have
unannotated pixels; so the Dice half is MONAI's ``DiceLoss`` on probabilities and one-hot targets that are both zero
on ignored pixels, and the cross-entropy half is torch's with ``ignore_index``. With no ignored pixel this equals
``DiceCELoss(to_onehot_y=True, softmax=True, batch=True)`` (a test checks it).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from monai.losses import DiceLoss

from ops.evaluation.metrics import IGNORE_INDEX

LOSSES = ("ce", "dice_ce")
_DICE = DiceLoss(include_background=True, softmax=False, batch=True)  # batch: Dice over the whole batch per class


def dice_ce_loss(logits: torch.Tensor, y: torch.Tensor, ignore_index: int = IGNORE_INDEX) -> torch.Tensor:
    """Dice (MONAI) + cross-entropy of ``[N, K, H, W]`` logits against ``[N, H, W]`` class ids."""
    valid = (y != ignore_index).unsqueeze(1)  # [N, 1, H, W]
    probs = logits.softmax(dim=1) * valid
    onehot = F.one_hot(torch.where(valid[:, 0], y, 0), logits.shape[1]).permute(0, 3, 1, 2) * valid
    return _DICE(probs, onehot.to(probs.dtype)) + F.cross_entropy(logits, y, ignore_index=ignore_index)


def segmentation_loss(
    logits: torch.Tensor, y: torch.Tensor, kind: str = "dice_ce", ignore_index: int = IGNORE_INDEX
) -> torch.Tensor:
    """The loss ``kind`` names (``ce`` or ``dice_ce``); zero (with a gradient path) when no pixel is annotated."""
    if kind not in LOSSES:
        raise ValueError(f"loss: expected one of {LOSSES}, received {kind!r}")
    if not (y != ignore_index).any():
        return logits.sum() * 0  # cross-entropy over no pixel would be NaN
    if kind == "ce":
        return F.cross_entropy(logits, y, ignore_index=ignore_index)
    return dice_ce_loss(logits, y, ignore_index)
