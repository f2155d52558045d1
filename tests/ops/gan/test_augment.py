"""Tests for ops.gan.augment: the ADA pipeline's operations and the p controller."""

from __future__ import annotations

import pytest
import torch

from ops.gan.augment import AdaController, AugmentPipe


def _images(n: int = 8, res: int = 8, seed: int = 0) -> torch.Tensor:
    return torch.rand(n, 3, res, res, generator=torch.Generator().manual_seed(seed)) * 2 - 1


def _rotations(x: torch.Tensor) -> list[torch.Tensor]:
    return [torch.rot90(x, k, dims=(-2, -1)) for k in range(4)]


def test_p_zero_is_identity() -> None:
    pipe = AugmentPipe.from_preset("bgc")
    x = _images()
    assert float(pipe.p) == 0.0
    assert pipe(x) is x


def test_p_one_changes_images_and_keeps_shape() -> None:
    torch.manual_seed(0)
    pipe = AugmentPipe.from_preset("bgc", p=1.0)
    x = _images()
    y = pipe(x)
    assert y.shape == x.shape and y.dtype == x.dtype and torch.isfinite(y).all()
    changed = (y - x).flatten(1).abs().amax(dim=1) > 1e-4
    assert changed.all()
    assert y.abs().max() < 10  # colour ops are unclamped (as in ADA) but stay in a sane range


def test_geometric_ops_keep_the_value_range() -> None:
    torch.manual_seed(0)
    x = _images()
    y = AugmentPipe.from_preset("bg", p=1.0)(x)
    assert y.shape == x.shape
    for xi, yi in zip(x, y, strict=True):  # integer ops only pick existing pixels
        assert set(yi.flatten().tolist()) <= set(xi.flatten().tolist())


def test_flip_and_rotation_are_exact_per_sample() -> None:
    torch.manual_seed(0)
    x = _images(n=16)
    y = AugmentPipe(xflip=1, rotate90=1, p=1.0)(x)
    for xi, yi in zip(x, y, strict=True):
        candidates = _rotations(xi) + _rotations(xi.flip(-1))
        assert any(torch.equal(yi, c) for c in candidates)
    assert len({tuple(yi.flatten()[:4].tolist()) for yi in y}) > 1  # samples are augmented independently


def test_integer_translation_wraps_like_roll() -> None:
    torch.manual_seed(0)
    x = _images(n=8, res=16)
    y = AugmentPipe(xint=1, xint_max=0.25, pad_mode="wrap", p=1.0)(x)
    shifts = [(dy, dx) for dy in range(-4, 5) for dx in range(-4, 5)]
    for xi, yi in zip(x, y, strict=True):
        assert any(torch.equal(yi, torch.roll(xi, s, dims=(-2, -1))) for s in shifts)


def test_partial_p_leaves_some_samples_untouched() -> None:
    torch.manual_seed(0)
    x = _images(n=64)
    y = AugmentPipe(brightness=1, p=0.5)(x)
    same = (y == x).flatten(1).all(dim=1)
    assert 10 < int(same.sum()) < 54


def test_hue_and_saturation_keep_grey_pixels_grey() -> None:
    torch.manual_seed(0)
    grey = torch.linspace(-1, 1, 8).reshape(8, 1, 1, 1).expand(8, 3, 4, 4).contiguous()
    y = AugmentPipe(hue=1, saturation=1, p=1.0)(grey)
    torch.testing.assert_close(y, grey, atol=1e-5, rtol=0)  # rotation/scaling about the luma axis
    colour = _images()
    assert not torch.allclose(AugmentPipe(hue=1, p=1.0)(colour), colour)


def test_gradients_flow_through_the_pipe_twice() -> None:
    torch.manual_seed(0)
    x = _images().requires_grad_(True)
    y = AugmentPipe.from_preset("bgc", p=1.0)(x)
    (g,) = torch.autograd.grad(y.square().sum(), x, create_graph=True)  # R1 needs double backward
    g.square().sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()


def test_bad_options_are_named() -> None:
    with pytest.raises(ValueError, match="known presets"):
        AugmentPipe.from_preset("everything")
    with pytest.raises(ValueError, match="pad_mode"):
        AugmentPipe(pad_mode="zeros")
    with pytest.raises(ValueError, match="AugmentPipe.hue"):
        AugmentPipe(hue=-1)


# ---------------------------------------------------------------------------------------------- ADA controller
def test_ada_p_rises_when_d_is_confident_on_reals() -> None:
    pipe = AugmentPipe.from_preset("bgc")
    ada = AdaController(pipe, target=0.6, interval=4, ada_kimg=500)
    confident = torch.full((16, 1), 3.0)  # sign(D(real)) = +1 > target
    for _ in range(3):
        assert ada.update(confident) == 0.0  # no adjustment before `interval` minibatches
    p = ada.update(confident)
    assert p == pytest.approx(16 * 4 / (500 * 1000))
    for _ in range(40):
        ada.update(confident)
    assert ada.p == pytest.approx(11 * 16 * 4 / (500 * 1000))
    assert ada.rt == 1.0


def test_ada_p_falls_when_d_is_unsure_and_never_goes_negative() -> None:
    pipe = AugmentPipe.from_preset("bgc", p=0.5)
    ada = AdaController(pipe, interval=4, ada_kimg=1)
    unsure = torch.full((16, 1), -3.0)  # sign(D(real)) = -1 < target
    for _ in range(4):
        ada.update(unsure)
    assert ada.p == pytest.approx(0.5 - 16 * 4 / 1000)
    for _ in range(40):
        ada.update(unsure)
        assert ada.p >= 0.0
    assert ada.p == 0.0


def test_ada_p_is_clamped_at_one_and_state_round_trips() -> None:
    pipe = AugmentPipe.from_preset("bgc", p=0.99)
    ada = AdaController(pipe, interval=2, ada_kimg=0.01)
    for _ in range(4):
        ada.update(torch.ones(8, 1))
    assert ada.p == 1.0
    ada.update(torch.ones(8, 1))
    other = AdaController(AugmentPipe.from_preset("bgc"), interval=2, ada_kimg=0.01)
    other.load_state_dict(ada.state_dict())
    assert other.state_dict() == ada.state_dict()
