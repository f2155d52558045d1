"""Classical augmentation for H&E/IHC crops: the 8 symmetries of the square plus HED stain jitter.

This is the baseline a user tries before any generator (GenSeg compares against it): tissue has no orientation,
and stain strength varies between labs and scanners. HED jitter (Tellez et al. 2018, "HED-light") separates the
image into haematoxylin, eosin/DAB and residual optical densities with the colour-deconvolution matrix of
``skimage.color`` and scales and shifts each channel by a small random amount per image, then recomposes RGB.
Everything is vectorised over the batch in torch; draws come from the caller's generator so a seed fixes them.
"""

from __future__ import annotations

import numpy as np
import torch
from skimage.color import hed_from_rgb, rgb_from_hed

from ops.evaluation.segmenter import random_dihedral

_LOG_ADJUST = float(np.log(1e-6))  # skimage's scaling of optical densities (stains ~0..1 on typical slides)


def hed_jitter(
    x: torch.Tensor,  # float [N, 3, H, W] RGB in [-1, 1]
    generator: torch.Generator,  # CPU generator the draws come from
    scale: float = 0.05,  # each stain's density multiplied by U(1 - scale, 1 + scale)
    shift: float = 0.005,  # and shifted by U(-shift, shift) (skimage stain units; IHC haematoxylin is ~0.01-0.1)
) -> torch.Tensor:
    """Randomly rescale and shift each stain's density per image; returns RGB in [-1, 1] of the same shape."""
    assert x.ndim == 4 and x.shape[1] == 3, f"x: expected [N, 3, H, W], received {tuple(x.shape)}"
    n = x.shape[0]
    to_hed = torch.as_tensor(hed_from_rgb, dtype=x.dtype, device=x.device)
    to_rgb = torch.as_tensor(rgb_from_hed, dtype=x.dtype, device=x.device)
    rgb = ((x + 1) / 2).clamp(1e-6, 1).permute(0, 2, 3, 1)  # [N, H, W, 3]
    stains = (torch.log(rgb) / _LOG_ADJUST) @ to_hed  # [N, H, W, 3] H, E(DAB), D(residual)
    alpha = 1 + (torch.rand(n, 1, 1, 3, generator=generator) * 2 - 1).to(x.device) * scale
    beta = (torch.rand(n, 1, 1, 3, generator=generator) * 2 - 1).to(x.device) * shift
    stains = stains * alpha + beta
    out = torch.exp((stains * _LOG_ADJUST) @ to_rgb).clamp(0, 1)
    return out.permute(0, 3, 1, 2) * 2 - 1


def classical_augment(
    x: torch.Tensor, y: torch.Tensor, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """Random dihedral transform (image and mask alike) followed by HED jitter (image only)."""
    x, y = random_dihedral(x, y, generator)
    return hed_jitter(x, generator), y
