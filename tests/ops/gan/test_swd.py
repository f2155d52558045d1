"""Tests for ops.gan.metrics: sliced Wasserstein distance and FID from a local detector file."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from ops.gan.metrics import FidScorer, frechet_distance, sliced_wasserstein_distance, swd_against, to_uint8_nchw

FAST = {"nhoods_per_image": 32, "dir_repeats": 2, "dirs_per_repeat": 32}


def _tiles(n: int = 8, res: int = 32, seed: int = 0) -> np.ndarray:
    """Textured pink/purple uint8 tiles [N, H, W, 3] (smooth blobs plus grain)."""
    rng = np.random.default_rng(seed)
    coarse = rng.random((n, res // 4, res // 4, 1))
    blobs = np.repeat(np.repeat(coarse, 4, axis=1), 4, axis=2)
    base = np.array([200.0, 120.0, 180.0]) - 80 * blobs + rng.normal(0, 12, (n, res, res, 3))
    return np.clip(base, 0, 255).astype(np.uint8)


def _shift(tiles: np.ndarray, rgb: tuple[int, int, int]) -> np.ndarray:
    return np.clip(tiles.astype(np.int16) + np.array(rgb), 0, 255).astype(np.uint8)


def test_set_against_itself_is_zero_and_levels_are_keyed_by_resolution() -> None:
    tiles = _tiles()
    result = sliced_wasserstein_distance(tiles, tiles, **FAST)
    assert list(result.per_level) == [32, 16]
    assert all(v == pytest.approx(0.0, abs=1e-6) for v in result.per_level.values())
    assert result.average == pytest.approx(0.0, abs=1e-6)
    assert set(result.to_metadata()) == {"swd_32", "swd_16", "swd_avg"}


def test_swd_grows_with_colour_shift() -> None:
    tiles = _tiles()
    small = sliced_wasserstein_distance(tiles, _shift(tiles, (8, -8, 0)), **FAST).average
    large = sliced_wasserstein_distance(tiles, _shift(tiles, (32, -32, 0)), **FAST).average
    assert 0 < small < large


def test_swd_sees_texture_differences_between_sets() -> None:
    a, b = _tiles(seed=0), _tiles(seed=1)
    flat = np.full_like(a, 150)
    same_kind = sliced_wasserstein_distance(a, b, **FAST).average
    assert same_kind < sliced_wasserstein_distance(a, flat, **FAST).average


def test_per_set_normalisation_reproduces_progan_colour_blindness() -> None:
    tiles = _tiles()
    shifted = _shift(tiles, (20, 20, 20))
    blind = sliced_wasserstein_distance(tiles, shifted, normalize="per_set", **FAST).average
    seeing = sliced_wasserstein_distance(tiles, shifted, **FAST).average
    assert blind < 0.1 * seeing


def test_swd_is_seedable() -> None:
    a, b = _tiles(seed=0), _tiles(seed=1)
    r1 = sliced_wasserstein_distance(a, b, seed=3, **FAST)
    assert r1 == sliced_wasserstein_distance(a, b, seed=3, **FAST)
    assert r1 != sliced_wasserstein_distance(a, b, seed=4, **FAST)


def test_float_tensor_input_matches_uint8_input() -> None:
    tiles = _tiles()
    as_float = torch.from_numpy(tiles).permute(0, 3, 1, 2).float().sub(128).div(127.5)
    assert torch.equal(to_uint8_nchw(as_float), torch.from_numpy(tiles).permute(0, 3, 1, 2))
    other = _tiles(seed=2)
    assert sliced_wasserstein_distance(as_float, other, **FAST) == sliced_wasserstein_distance(tiles, other, **FAST)


def test_swd_rejects_bad_inputs() -> None:
    with pytest.raises(ValueError, match="same count and size"):
        sliced_wasserstein_distance(_tiles(n=8), _tiles(n=4), **FAST)
    with pytest.raises(ValueError, match="expected uint8"):
        sliced_wasserstein_distance(_tiles().astype(np.float32), _tiles(), **FAST)
    with pytest.raises(ValueError, match="normalize"):
        sliced_wasserstein_distance(_tiles(), _tiles(), normalize="global")


# ---------------------------------------------------------------------------------------------- FID
def test_fid_without_weights_file_names_the_path(tmp_path: Path) -> None:
    missing = tmp_path / "inception-2015-12-05.pt"
    with pytest.raises(FileNotFoundError, match="inception-2015-12-05.pt.*does not exist"):
        FidScorer(missing)


class _FakeDetector(torch.nn.Module):
    """Stands in for NVlabs' TorchScript Inception: same call signature, 6-d 'features'."""

    def forward(self, x: torch.Tensor, return_features: bool = False) -> torch.Tensor:
        x = x.to(torch.float32) / 255
        return torch.cat([x.mean(dim=(2, 3)), x.std(dim=(2, 3))], dim=1)


@pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated:DeprecationWarning")
def test_fid_with_a_local_torchscript_detector(tmp_path: Path) -> None:
    path = tmp_path / "detector.pt"
    torch.jit.script(_FakeDetector()).save(str(path))
    scorer = FidScorer(path, batch_size=4)
    tiles = _tiles(n=12)
    assert scorer.features(tiles).shape == (12, 6)
    assert scorer.score(tiles, tiles) == pytest.approx(0.0, abs=1e-6)
    assert scorer.score(tiles, _shift(tiles, (40, -40, 0))) > 0.01


def test_fid_with_a_file_that_is_not_torchscript(tmp_path: Path) -> None:
    path = tmp_path / "inception.pt"
    path.write_bytes(b"not a network")
    with pytest.raises(ValueError, match="inception.pt is not a loadable TorchScript"):
        FidScorer(path)


def test_frechet_distance_of_identical_gaussians_is_zero() -> None:
    mu, sigma = np.zeros(3), np.eye(3)
    assert frechet_distance(mu, sigma, mu, sigma) == pytest.approx(0.0, abs=1e-9)
    assert frechet_distance(mu, sigma, mu + 1, sigma) == pytest.approx(3.0)


def test_swd_against_compares_equal_counts() -> None:
    tiles = _tiles(n=8)
    assert swd_against(tiles, tiles[:5]).average == pytest.approx(0.0, abs=1e-6)  # reference cut to the 5 samples
    assert swd_against(tiles, _shift(tiles, (30, -30, 0))).average > 1.0
