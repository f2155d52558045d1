"""U-Net segmenter: shapes, a toy problem it must learn, determinism, augmentation, the seeds × sets comparison."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from ops.evaluation.segmenter import (
    UNet,
    UNetConfig,
    evaluate_segmenter,
    load_segmenter,
    predict_segmenter,
    random_dihedral,
    save_segmenter,
    train_segmenter,
)

TINY = UNetConfig(n_classes=2, base_channels=4, depth=2)


def _squares(n: int, seed: int, size: int = 32) -> tuple[np.ndarray, np.ndarray]:
    """Bright squares (class 1) of random size and place on a noisy dark background (class 0)."""
    rng = np.random.default_rng(seed)
    side = rng.integers(6, 14, n)[:, None, None]
    y0 = (rng.random(n) * (size - side[:, 0, 0])).astype(int)[:, None, None]
    x0 = (rng.random(n) * (size - side[:, 0, 0])).astype(int)[:, None, None]
    yy, xx = np.mgrid[:size, :size]
    masks = ((yy >= y0) & (yy < y0 + side) & (xx >= x0) & (xx < x0 + side)).astype(np.uint8)
    images = rng.normal(70, 20, (n, size, size, 3)) + 110 * masks[..., None]
    return np.clip(images, 0, 255).astype(np.uint8), masks


@pytest.fixture(scope="module")
def toy() -> dict[str, tuple[np.ndarray, np.ndarray]]:
    return {"train": _squares(64, 0), "test": _squares(16, 1)}


# ---------------------------------------------------------------------------------------------- network
@pytest.mark.parametrize("up_mode", ["bilinear", "transpose"])
@pytest.mark.parametrize("depth", [0, 1, 3])
def test_unet_keeps_spatial_size_and_outputs_one_logit_per_class(up_mode: str, depth: int) -> None:
    cfg = UNetConfig(n_classes=3, in_channels=3, base_channels=4, depth=depth, up_mode=up_mode)
    out = UNet(cfg)(torch.randn(2, 3, 16, 24))
    assert out.shape == (2, 3, 16, 24)


@pytest.mark.parametrize("norm", ["batch", "group"])
def test_monai_basic_unet_behind_the_same_config_trains_saves_and_loads(norm: str, toy: dict, tmp_path: Path) -> None:
    cfg = UNetConfig(n_classes=2, base_channels=4, depth=4, norm=norm, arch="monai")
    model = train_segmenter(*toy["train"], cfg, epochs=3, lr=1e-2, seed=0)
    assert evaluate_segmenter(model, *toy["test"], n_classes=2)["mean_dice"] > 0.6
    loaded = load_segmenter(save_segmenter(model, tmp_path / "monai.pt"))
    assert loaded.cfg == cfg
    assert np.array_equal(predict_segmenter(model, toy["test"][0]), predict_segmenter(loaded, toy["test"][0]))
    with pytest.raises(ValueError, match="BasicUNet always down-samples 4 times; set depth=4"):
        UNetConfig(n_classes=2, depth=3, arch="monai")


def test_unet_rejects_sizes_not_divisible_by_two_to_the_depth() -> None:
    with pytest.raises(AssertionError, match="divisible by 2\\*\\*depth = 8"):
        UNet(UNetConfig(n_classes=2, depth=3))(torch.randn(1, 3, 20, 16))


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"n_classes": 1}, "n_classes: expected >= 2"),
        ({"n_classes": 2, "base_channels": 0}, "base_channels: expected a positive integer"),
        ({"n_classes": 2, "depth": -1}, "depth: expected an integer >= 0"),
        ({"n_classes": 2, "up_mode": "nearest"}, "up_mode: expected one of"),
        ({"n_classes": 2, "norm": "layer"}, "norm: expected one of"),
        ({"n_classes": 2, "arch": "timm"}, "arch: expected one of"),
    ],
)
def test_bad_config_fails_naming_the_option(kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        UNetConfig(**kwargs)


def test_config_round_trips_and_rejects_unknown_keys() -> None:
    assert UNetConfig.from_dict(TINY.to_dict()) == TINY
    with pytest.raises(ValueError, match="unknown keys \\['width'\\]"):
        UNetConfig.from_dict({**TINY.to_dict(), "width": 3})


# ---------------------------------------------------------------------------------------------- augmentation
@pytest.mark.parametrize("shape", [(8, 8), (8, 12)])
def test_dihedral_augmentation_moves_images_and_masks_together(shape: tuple[int, int]) -> None:
    y = torch.randint(0, 5, (32, *shape))
    x = torch.stack([y.float(), -y.float()], dim=1)
    xa, ya = random_dihedral(x, y, torch.Generator().manual_seed(0))
    assert xa.shape == x.shape and ya.shape == y.shape
    assert torch.equal(xa[:, 0], ya.float()) and torch.equal(xa[:, 1], -ya.float())
    assert (ya != y).flatten(1).any(dim=1).sum() > 16  # most samples changed
    assert torch.equal(ya.flatten(1).sort(dim=1).values, y.flatten(1).sort(dim=1).values)  # a permutation of pixels


# ---------------------------------------------------------------------------------------------- training
def test_tiny_unet_learns_bright_squares(toy: dict) -> None:
    losses: list[float] = []
    model = train_segmenter(
        *toy["train"], TINY, epochs=5, lr=1e-2, seed=0, callback=lambda epoch, loss: losses.append(loss)
    )
    assert len(losses) == 5 and losses[-1] < losses[0]
    report = evaluate_segmenter(model, *toy["test"], n_classes=2)
    assert report["mean_dice"] > 0.8, report
    assert report["dice/1"] > 0.8 and 0 < report["pixel_accuracy"] <= 1
    pred = predict_segmenter(model, toy["test"][0], batch_size=5)
    assert pred.dtype == np.uint8 and pred.shape == toy["test"][1].shape


def test_training_is_deterministic_for_a_seed_and_leaves_global_rng_alone(toy: dict) -> None:
    images, masks = toy["train"][0][:16], toy["train"][1][:16]
    torch.manual_seed(123)
    before = torch.get_rng_state()
    a = train_segmenter(images, masks, TINY, epochs=2, batch_size=8, seed=7)
    assert torch.equal(torch.get_rng_state(), before)
    b = train_segmenter(images, masks, TINY, epochs=2, batch_size=8, seed=7)
    c = train_segmenter(images, masks, TINY, epochs=2, batch_size=8, seed=8)
    sa, sb, sc = a.state_dict(), b.state_dict(), c.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert not all(torch.equal(sa[k], sc[k]) for k in sa)


def test_ignored_pixels_do_not_count(toy: dict) -> None:
    images, masks = toy["train"][0][:8], toy["train"][1][:8].copy()
    masks[:, :, :16] = 255
    model = train_segmenter(images, masks, TINY, epochs=1, seed=0)
    report = evaluate_segmenter(model, images, masks, n_classes=2)
    assert np.isfinite(report["mean_dice"])
    fully_ignored = np.full_like(masks, 255)
    train_segmenter(images, fully_ignored, TINY, epochs=1, seed=0)  # no NaN step, no crash


def test_save_and_load_round_trip(toy: dict, tmp_path: Path) -> None:
    model = train_segmenter(toy["train"][0][:8], toy["train"][1][:8], TINY, epochs=1, seed=0)
    loaded = load_segmenter(save_segmenter(model, tmp_path / "unet.pt"))
    assert loaded.cfg == TINY
    images = toy["test"][0]
    assert np.array_equal(predict_segmenter(model, images), predict_segmenter(loaded, images))
    torch.save({"format": "other"}, tmp_path / "bad.pt")
    with pytest.raises(ValueError, match="expected format 'histofactory.unet/1'"):
        load_segmenter(tmp_path / "bad.pt")


@pytest.mark.parametrize(
    ("images", "masks", "match"),
    [
        (np.zeros((2, 32, 32, 3), np.float32), np.zeros((2, 32, 32), np.uint8), "expected uint8 \\[N, H, W, 3\\]"),
        (np.zeros((2, 30, 32, 3), np.uint8), np.zeros((2, 30, 32), np.uint8), "divisible by 2\\*\\*depth = 4"),
        (np.zeros((2, 32, 32, 3), np.uint8), np.zeros((3, 32, 32), np.uint8), "masks: expected shape"),
        (np.zeros((2, 32, 32, 3), np.uint8), np.full((2, 32, 32), 4, np.uint8), "class ids must be in 0..1"),
    ],
)
def test_bad_training_inputs_are_rejected(images: np.ndarray, masks: np.ndarray, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        train_segmenter(images, masks, TINY, epochs=1)


def test_bad_training_settings_are_rejected(toy: dict) -> None:
    with pytest.raises(ValueError, match="epochs must be a positive integer"):
        train_segmenter(*toy["test"], TINY, epochs=0)
    with pytest.raises(ValueError, match="lr must be > 0"):
        train_segmenter(*toy["test"], TINY, epochs=1, lr=0.0)
