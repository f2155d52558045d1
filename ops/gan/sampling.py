"""Sampling a trained generator: images (with their z and w) for per-image seeds, reproducibly.

Apart from the training loop because everything downstream of training (samples, features, export, benchmarks)
samples and none of it trains.
"""

from __future__ import annotations

import numpy as np
import torch

from ops.gan.networks import Generator, images_to_uint8


@torch.no_grad()
def generate(
    G: Generator, seeds: np.ndarray, psi: float, device: torch.device | str = "cpu", batch: int = 1
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Images for per-image seeds, reproducibly: image i depends on ``seeds[i]`` only.

    ``batch=1`` (the default) makes every image bit-for-bit reproducible on its own: batched convolutions may
    round differently from single-image ones (seen: 1 pixel value off by 1 in 12k). Larger batches are for
    throughput where exact regeneration does not matter (evaluation sets).

    Returns:
        (z ``[N, z_dim]`` float32, w ``[N, num_ws, w_dim]`` float32, images uint8 ``[N, R, R, 3]``).
    """
    zs, ws, imgs = [], [], []
    for i in range(0, len(seeds), batch):
        z = torch.stack(
            [torch.randn(G.cfg.z_dim, generator=torch.Generator().manual_seed(int(s))) for s in seeds[i : i + batch]]
        ).to(device)
        w = G.mapping(z, psi=psi)
        imgs.append(images_to_uint8(G.synthesis(w, noise_mode="const")))
        zs.append(z.cpu().numpy())
        ws.append(w.cpu().numpy())
    return np.concatenate(zs), np.concatenate(ws), np.concatenate(imgs)
