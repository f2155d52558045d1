"""Memorisation check: copies of training tiles are flagged, new images are not, neighbours and thresholds are exact."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from ops.export.memorization import (
    DiscriminatorFeatures,
    check_memorization,
    copy_threshold,
    memorization_summary,
    nearest_neighbour_distances,
    pixel_descriptors,
)
from ops.gan.networks import GanConfig
from ops.gan.trainer import GanTrainer, TrainConfig

RES = 32
TINY_GAN = GanConfig(resolution=RES, z_dim=16, w_dim=16, mapping_layers=1, channel_base=256, channel_max=32)


def _tiles(n: int, seed: int) -> np.ndarray:
    """Smooth random RGB tiles (8×8 noise upsampled 4×), a stand-in for tissue texture."""
    rng = np.random.default_rng(seed)
    coarse = rng.integers(40, 220, (n, 8, 8, 3))
    return np.repeat(np.repeat(coarse, 4, axis=1), 4, axis=2).astype(np.uint8)


def _noised(tile: np.ndarray, sigma: float, seed: int) -> np.ndarray:
    noise = np.random.default_rng(seed).normal(0, sigma, tile.shape)
    return np.clip(tile + noise, 0, 255).astype(np.uint8)


@pytest.fixture(scope="module")
def bank() -> np.ndarray:
    return _tiles(300, seed=0)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    trainer = GanTrainer(TINY_GAN, TrainConfig(batch_size=4, seed=0), device="cpu")
    return trainer.save_checkpoint(tmp_path_factory.mktemp("gan") / "checkpoint.pt")


# ---------------------------------------------------------------------------------------------- descriptors
def test_pixel_descriptors_are_area_averages_in_unit_range() -> None:
    images = np.zeros((2, 4, 4, 3), np.uint8)
    images[0, :2, :2] = 255  # top-left quarter white
    d = pixel_descriptors(images, size=2)
    assert d.dtype == np.float32 and d.shape == (2, 2 * 2 * 3)
    assert np.allclose(d[0].reshape(2, 2, 3)[..., 0], [[1, 0], [0, 0]]) and np.all(d[1] == 0)
    assert pixel_descriptors(_tiles(3, 1)).shape == (3, 32 * 32 * 3)


def test_pixel_descriptors_reject_non_uint8_rgb() -> None:
    with pytest.raises(ValueError, match="expected uint8 \\[N, H, W, 3\\]"):
        pixel_descriptors(np.zeros((2, 8, 8, 3), np.float32))


def test_discriminator_features_are_unit_vectors_of_fixed_size(checkpoint: Path, bank: np.ndarray) -> None:
    features = DiscriminatorFeatures(checkpoint)
    assert features.dim == TINY_GAN.channels(4)
    f = features(bank[:10], batch_size=4)
    assert f.dtype == np.float32 and f.shape == (10, features.dim)
    assert np.allclose(np.linalg.norm(f, axis=1), 1, atol=1e-5)
    # An image's descriptor does not depend on its batch-mates (minibatch-stddev is neutralised).
    assert np.allclose(features(bank[3:4]), f[3], atol=1e-5)
    assert not np.allclose(f[0], f[1])


def test_discriminator_features_reject_another_resolution(checkpoint: Path) -> None:
    with pytest.raises(ValueError, match="takes 32×32 tiles, received 16×16"):
        DiscriminatorFeatures(checkpoint)(np.zeros((1, 16, 16, 3), np.uint8))


# ---------------------------------------------------------------------------------------------- neighbours
def test_nearest_neighbours_match_brute_force_across_chunk_boundaries() -> None:
    rng = np.random.default_rng(0)
    queries, bank = rng.normal(size=(11, 5)).astype(np.float32), rng.normal(size=(13, 5)).astype(np.float32)
    dist, idx = nearest_neighbour_distances(queries, bank, chunk=4)
    full = np.linalg.norm(queries[:, None].astype(np.float64) - bank[None], axis=2)
    assert np.array_equal(idx, full.argmin(axis=1))
    assert np.allclose(dist, full.min(axis=1))
    assert nearest_neighbour_distances(torch.from_numpy(bank[[5]]), bank)[0][0] == 0  # exact match, exactly 0


def test_nearest_neighbours_reject_mismatched_inputs() -> None:
    with pytest.raises(ValueError, match="queries have 3 dimensions, bank 4"):
        nearest_neighbour_distances(np.zeros((2, 3)), np.zeros((2, 4)))
    with pytest.raises(ValueError, match="expected a \\[N, D\\] array"):
        nearest_neighbour_distances(np.zeros(3), np.zeros((2, 3)))
    with pytest.raises(ValueError, match="empty bank"):
        nearest_neighbour_distances(np.zeros((2, 3)), np.zeros((0, 3)))


def test_copy_threshold_excludes_self_matches() -> None:
    bank = np.array([[0.0], [1.0], [3.0], [7.0]])  # NN distances without self: 1, 1, 2, 4
    assert copy_threshold(bank, quantile=0.01) == pytest.approx(1.0)
    assert copy_threshold(bank, quantile=0.99) == pytest.approx(4.0, abs=0.1)
    assert copy_threshold(np.vstack([bank, bank[:1]]), quantile=0.01) == 0  # a true duplicate does count
    sampled = copy_threshold(_tiles(30, 2).reshape(30, -1).astype(np.float32), sample=10, seed=1)
    assert sampled > 0


@pytest.mark.parametrize(
    ("kwargs", "match"), [({"quantile": 0.0}, "quantile must be in \\(0, 1\\)"), ({"sample": 0}, "sample must be >= 1")]
)
def test_copy_threshold_rejects_bad_settings(kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        copy_threshold(np.zeros((3, 2)), **kwargs)
    with pytest.raises(ValueError, match="at least 2 bank rows"):
        copy_threshold(np.zeros((1, 2)))


# ---------------------------------------------------------------------------------------------- the check
def test_copies_are_flagged_and_new_images_are_not(bank: np.ndarray) -> None:
    copies = np.stack([bank[7], _noised(bank[23], sigma=6, seed=1)])
    other = np.zeros((3, RES, RES, 3), np.uint8)  # unlike any tissue: saturated red, green, and a checkerboard
    other[0, ..., 0] = other[1, ..., 1] = 255
    other[2, ::2, ::2] = other[2, 1::2, 1::2] = 255
    new = _tiles(100, seed=99)
    df = check_memorization(np.concatenate([copies, other, new]), bank)
    assert df["near_copy"].iloc[:2].all() and df["near_copy_pixel"].iloc[:2].all()
    assert df["nn_pixel_index"].iloc[:2].tolist() == [7, 23]
    assert df["nn_pixel"].iloc[0] == 0 and 0 < df["nn_pixel"].iloc[1] < df.attrs["pixel_threshold"]
    assert not df["near_copy"].iloc[2:5].any()
    assert df["near_copy"].iloc[5:].mean() <= 0.05  # by construction about `quantile` of new images are flagged
    assert df["nn_feature"].isna().all() and (df["nn_feature_index"] == -1).all()
    assert np.isnan(df.attrs["feature_threshold"]) and df.attrs["n_bank"] == len(bank)

    summary = memorization_summary(df)
    assert summary["n_synthetic"] == len(df) and summary["n_near_copies"] == int(df["near_copy"].sum()) >= 2


def test_feature_space_flags_copies_with_a_checkpoint(bank: np.ndarray, checkpoint: Path) -> None:
    checkerboard = np.zeros((RES, RES, 3), np.uint8)
    checkerboard[::2, ::2] = checkerboard[1::2, 1::2] = 255
    synthetic = np.stack([bank[4], checkerboard])
    df = check_memorization(synthetic, bank, checkpoint=checkpoint)
    assert df["nn_feature"].notna().all() and df.attrs["feature_threshold"] > 0
    assert df["nn_feature_index"].iloc[0] == 4 and df["nn_feature"].iloc[0] == pytest.approx(0, abs=1e-6)
    assert df["near_copy_feature"].iloc[0] and df["near_copy"].iloc[0]
    assert not df["near_copy_pixel"].iloc[1]


def test_check_rejects_tiles_of_different_sizes(bank: np.ndarray) -> None:
    with pytest.raises(ValueError, match="expected the same size"):
        check_memorization(np.zeros((1, 16, 16, 3), np.uint8), bank)
