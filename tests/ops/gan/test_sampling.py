"""Sampling a generator: image i depends on seeds[i] only, so any image can be regenerated on its own."""

from __future__ import annotations

import numpy as np
import torch

from ops.gan.networks import GanConfig, Generator
from ops.gan.sampling import generate

TINY = GanConfig(resolution=16, z_dim=16, w_dim=16, mapping_layers=2, channel_base=128, channel_max=16)


def test_images_depend_on_their_seed_only() -> None:
    torch.manual_seed(0)
    G = Generator(TINY).eval()
    z, w, images = generate(G, np.array([7, 3, 11]), psi=0.7)
    assert z.shape == (3, 16) and w.shape[0] == 3 and images.shape == (3, 16, 16, 3) and images.dtype == np.uint8
    _, _, alone = generate(G, np.array([3]), psi=0.7)
    np.testing.assert_array_equal(alone[0], images[1])  # regenerated alone: the same pixels
    _, _, batched = generate(G, np.array([7, 3, 11]), psi=0.7, batch=2)
    np.testing.assert_allclose(batched.astype(int), images.astype(int), atol=1)  # batches may round differently
    assert not np.array_equal(images[0], images[2])
