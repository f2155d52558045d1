"""Tests for ops.gan.networks: presets, shapes, determinism, truncation, resampling filters."""

from __future__ import annotations

import math
from collections.abc import Iterator

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from ops.gan.networks import (
    GAN_PRESETS,
    Discriminator,
    GanConfig,
    Generator,
    count_parameters,
    downsample2d,
    get_gan_config,
    images_to_uint8,
    upsample2d,
)

TINY = GanConfig(resolution=16, z_dim=16, w_dim=16, mapping_layers=2, channel_base=128, channel_max=16)


@pytest.fixture(autouse=True, scope="module")
def _one_intra_op_thread() -> Iterator[None]:
    """Tiny networks gain nothing from 2 threads, and on shared busy cores OpenMP threads wait on each other;
    run this module single-threaded and restore the setting afterwards."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _generator(seed: int = 0, cfg: GanConfig = TINY) -> Generator:
    torch.manual_seed(seed)
    return Generator(cfg)


def _z(n: int, seed: int, cfg: GanConfig = TINY) -> torch.Tensor:
    return torch.randn(n, cfg.z_dim, generator=torch.Generator().manual_seed(seed))


# ---------------------------------------------------------------------------------------------- config
def test_presets_have_documented_widths() -> None:
    demo = get_gan_config("demo")
    assert demo.resolution == 64
    assert [demo.channels(r) for r in demo.block_resolutions] == [104, 104, 104, 64, 32]
    paper = get_gan_config("paper")
    assert (paper.resolution, paper.channel_base, paper.channel_max) == (4096, 32768, 512)
    last_five = [paper.channels(r) for r in paper.block_resolutions[-5:]]
    assert paper.block_resolutions[-5:] == [256, 512, 1024, 2048, 4096]
    assert last_five == [128, 64, 32, 16, 8] and 2 * sum(last_five) == 496  # HDGAN counts both convs
    assert get_gan_config("256").resolution == 256


def test_demo_generator_is_about_0_8m_parameters() -> None:
    n = count_parameters(Generator(get_gan_config("demo")))
    assert 0.7e6 < n < 0.9e6


def test_unknown_preset_lists_known_names() -> None:
    with pytest.raises(ValueError, match="known presets: .*demo.*paper"):
        get_gan_config("huge")


@pytest.mark.parametrize(("field", "value"), [("resolution", 48), ("resolution", 4), ("z_dim", 0), ("channel_base", 8)])
def test_bad_config_names_the_option(field: str, value: int) -> None:
    with pytest.raises(ValueError, match=field):
        GanConfig(**{**TINY.to_dict(), field: value})


def test_config_dict_round_trip_and_unknown_key() -> None:
    for cfg in GAN_PRESETS.values():
        assert GanConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(ValueError, match="unknown keys \\['colour'\\]"):
        GanConfig.from_dict({**TINY.to_dict(), "colour": 1})


# ---------------------------------------------------------------------------------------------- shapes
def test_image_and_feature_shapes_match_block_lists() -> None:
    G = _generator()
    assert G.block_resolutions == [4, 8, 16]
    assert G.block_channels == [16, 16, 8]
    img, feats = G(_z(3, 0), return_features=True)
    assert img.shape == (3, 3, 16, 16) and img.dtype == torch.float32
    assert [tuple(f.shape) for f in feats] == [
        (3, c, r, r) for r, c in zip(G.block_resolutions, G.block_channels, strict=True)
    ]
    assert G(_z(3, 0)).shape == img.shape  # without features: a plain tensor


def test_mapping_and_synthesis_api() -> None:
    G = _generator()
    ws = G.mapping(_z(2, 0))
    assert ws.shape == (2, G.num_ws, TINY.w_dim) and G.num_ws == 1 + 2 + 2 + 1
    assert torch.equal(G.synthesis(ws, noise_mode="const"), G(_z(2, 0)))


def test_wrong_shapes_fail_at_entry() -> None:
    G, D = _generator(), Discriminator(TINY)
    with pytest.raises(AssertionError, match="z: expected"):
        G.mapping(torch.randn(2, TINY.z_dim + 1))
    with pytest.raises(AssertionError, match="ws: expected"):
        G.synthesis(torch.randn(2, G.num_ws - 1, TINY.w_dim))
    with pytest.raises(AssertionError, match="img: expected"):
        D(torch.randn(2, 3, 32, 32))
    with pytest.raises(ValueError, match="noise_mode"):
        G(_z(1, 0), noise_mode="fixed")


def test_discriminator_logits_for_any_batch_size() -> None:
    torch.manual_seed(0)
    D = Discriminator(TINY)
    for n in (1, 3, 8):  # minibatch-stddev groups shrink to a divisor of the batch
        assert D(torch.randn(n, 3, 16, 16)).shape == (n, 1)


# ---------------------------------------------------------------------------------------------- determinism
def test_same_seed_same_image_different_seed_different_image() -> None:
    a = _generator(seed=0)(_z(2, seed=1))
    b = _generator(seed=0)(_z(2, seed=1))
    assert torch.equal(a, b)  # bit-identical on CPU
    assert not torch.allclose(a, _generator(seed=0)(_z(2, seed=2)))
    assert not torch.allclose(a, _generator(seed=5)(_z(2, seed=1)))


def test_noise_modes() -> None:
    G = _generator()
    with torch.no_grad():
        for p in G.parameters():
            if p.ndim == 0:  # noise_strength starts at 0; make noise visible
                p.fill_(0.5)
    z = _z(2, 0)
    assert torch.equal(G(z, noise_mode="const"), G(z, noise_mode="const"))
    assert not torch.equal(G(z, noise_mode="random"), G(z, noise_mode="random"))
    assert not torch.allclose(G(z, noise_mode="none"), G(z, noise_mode="const"))


def test_truncation_psi_zero_gives_w_avg() -> None:
    G = _generator()
    for seed in range(5):  # move w_avg away from its zero init
        G.mapping(_z(8, seed), update_w_avg=True)
    assert G.mapping.w_avg.abs().sum() > 0
    ws = G.mapping(_z(4, 9), psi=0.0)
    assert torch.allclose(ws, G.mapping.w_avg.expand_as(ws))
    img = G(_z(4, 9), psi=0.0)
    assert torch.allclose(img, img[:1].expand_as(img), atol=1e-6)  # every sample is the average image
    half = G.mapping(_z(4, 9), psi=0.5)
    full = G.mapping(_z(4, 9))
    assert torch.allclose(half, G.mapping.w_avg.lerp(full, 0.5), atol=1e-6)


# ---------------------------------------------------------------------------------------------- filters
def _upfirdn_reference(x: torch.Tensor, up: int, down: int, pad: tuple[int, int], gain: float) -> torch.Tensor:
    """NVlabs' reference upfirdn2d: zero insertion, pad, [1, 3, 3, 1] FIR by convolution, decimation."""
    N, C, H, W = x.shape
    if up > 1:
        x = F.pad(x.reshape(N, C, H, 1, W, 1), [0, up - 1, 0, 0, 0, up - 1]).reshape(N, C, H * up, W * up)
    x = F.pad(x, [pad[0], pad[1], pad[0], pad[1]])
    f = torch.tensor([1.0, 3.0, 3.0, 1.0], dtype=x.dtype)
    f = torch.outer(f, f) / 64 * gain
    return F.conv2d(x, f.expand(C, 1, 4, 4), groups=C)[:, :, ::down, ::down]


def test_resampling_matches_fir_reference() -> None:
    x = torch.randn(2, 3, 8, 8, dtype=torch.float64)
    torch.testing.assert_close(upsample2d(x), _upfirdn_reference(x, 2, 1, (2, 1), 4.0))
    torch.testing.assert_close(downsample2d(x), _upfirdn_reference(x, 1, 2, (1, 1), 1.0))


def test_images_to_uint8_layout() -> None:
    img = torch.tensor([-1.0, 0.0, 1.0]).reshape(1, 3, 1, 1).expand(2, 3, 4, 4)
    out = images_to_uint8(img)
    assert out.shape == (2, 4, 4, 3) and out.dtype == np.uint8
    assert out[0, 0, 0].tolist() == [0, 128, 255]
    assert math.isclose(float(images_to_uint8(torch.full((1, 3, 1, 1), 5.0)).max()), 255)
