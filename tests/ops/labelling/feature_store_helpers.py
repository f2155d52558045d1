"""Tiny generator-like feature blocks and HDGAN's full-resolution maps of them, for the store and sampler tests."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

# Blocks like a tiny StyleGAN2 synthesis: channels halve as resolution doubles; one odd, non-square block checks
# the align_corners=False arithmetic at a non-integer scale.
SHAPES = [(16, 4, 4), (8, 8, 8), (4, 16, 16), (3, 5, 7)]
OUT = (32, 24)
N_IMAGES = 3


def make_images(seed: int = 0) -> list[list[np.ndarray]]:
    rng = np.random.default_rng(seed)
    return [[rng.normal(size=s).astype(np.float32) for s in SHAPES] for _ in range(N_IMAGES)]


def full_maps(images: list[list[np.ndarray]], fp16: bool) -> list[np.ndarray]:
    """What HDGAN computed: every block through F.interpolate, concatenated, [H, W, F]."""
    maps = []
    for blocks in images:
        ups = []
        for b in blocks:
            b = b.astype(np.float16).astype(np.float32) if fp16 else b
            ups.append(F.interpolate(torch.from_numpy(b)[None], size=OUT, mode="bilinear", align_corners=False)[0])
        maps.append(torch.cat(ups).permute(1, 2, 0).numpy())
    return maps
