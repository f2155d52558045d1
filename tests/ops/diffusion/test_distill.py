"""DISC's self-distillation: the stored separated latents, and fine-tuning batches fused under random masks."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from ops.diffusion.denoiser import LdmConfig, LdmTrainConfig, LdmTrainer
from ops.diffusion.distill import DiscBatches, SeparatedLatentSet, fused_batch
from ops.diffusion.samplers import latent_mask, separated_latents

TINY = LdmConfig(
    n_classes=3,
    resolution=32,
    latent_size=8,
    block_out_channels=(16, 32),
    attention_levels=(False, True),
    norm_num_groups=8,
)


def _coded_store(seeds: int = 5, k: int = 3) -> SeparatedLatentSet:
    """Latents whose every value says where it came from: 100 * seed index + class."""
    code = 100.0 * torch.arange(seeds)[:, None] + torch.arange(k)[None, :]
    return SeparatedLatentSet(
        np.arange(seeds) + 50, code[:, :, None, None, None].expand(-1, -1, 4, 8, 8).clone(), 2, 1.0
    )


def _random_masks(seeds: np.ndarray) -> np.ndarray:
    """Blocky three-class masks, one per seed (stands in for the mask bank's sampler)."""
    out = np.empty((len(seeds), 32, 32), np.uint8)
    for i, s in enumerate(seeds):
        out[i] = np.kron(np.random.default_rng(int(s)).integers(0, 3, (4, 4)), np.ones((8, 8), np.int64))
    return out


def test_disc_batches_fuse_stored_latents_under_random_masks() -> None:
    store = _coded_store()
    asked: list[np.ndarray] = []
    batches = DiscBatches(store, lambda seeds: (asked.append(seeds), _random_masks(seeds))[1], batch=4, seed=0)
    z, masks = batches()
    assert z.shape == (4, 4, 8, 8) and masks.shape == (4, 32, 32) and masks.dtype == torch.long
    assert len(asked) == 1 and len(asked[0]) == 4
    seed_index, cls = torch.div(z, 100, rounding_mode="floor"), torch.remainder(z, 100)
    assert torch.equal(cls[:, 0], latent_mask(masks, 8).float()), "each cell holds its mask class's latent"
    for row in seed_index:  # one stored seed per row, all channels and cells
        assert row.unique().numel() == 1 and 0 <= row[0, 0, 0] < 5
    z2, masks2 = batches()
    assert not torch.equal(masks, masks2), "every batch draws new random masks"
    assert len(asked) == 2 and not np.array_equal(asked[0], asked[1])


def test_fused_batch_matches_eq2_for_chosen_seeds() -> None:
    store = _coded_store()
    masks = torch.from_numpy(_random_masks(np.array([1, 2]))).long()
    z = fused_batch(store.latents, torch.tensor([3, 0]), masks)
    small = latent_mask(masks, 8).float()
    assert torch.equal(z[0, 0], 300 + small[0]) and torch.equal(z[1, 2], small[1])


def test_generated_set_round_trips_and_bad_files_are_named(tmp_path: Path) -> None:
    model = LdmTrainer(TINY, LdmTrainConfig()).sampling_model
    seeds = np.array([7, 8, 9])
    store = SeparatedLatentSet.generate(model, seeds, ddim_steps=2, batch=2)
    assert store.latents.shape == (3, 3, 4, 8, 8) and store.n_classes == 3
    torch.testing.assert_close(store.latents[1:2], separated_latents(model, seeds[1:2], 2), atol=1e-5, rtol=1e-5)
    loaded = SeparatedLatentSet.load(store.save(tmp_path / "disc.npz"))
    np.testing.assert_array_equal(loaded.seeds, seeds)
    torch.testing.assert_close(loaded.latents, store.latents, atol=1e-2, rtol=1e-3)  # stored as float16
    (tmp_path / "bad.npz").write_bytes(b"nope")
    with pytest.raises(ValueError, match=r"bad\.npz are not a readable set.*rematerialize ldm_model"):
        SeparatedLatentSet.load(tmp_path / "bad.npz")
    with pytest.raises(FileNotFoundError, match=r"missing\.npz do not exist"):
        SeparatedLatentSet.load(tmp_path / "missing.npz")
    with pytest.raises(ValueError, match="masks hold class ids >= 3"):
        DiscBatches(store, lambda s: np.full((len(s), 32, 32), 255, np.uint8), batch=2)()
