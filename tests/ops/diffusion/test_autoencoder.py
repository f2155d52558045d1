"""Tests for ops.diffusion.autoencoder: configs, presets, learning on real tissue, latents, checkpoints, errors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from diffusers import AutoencoderKL, VQModel
from skimage.data import immunohistochemistry

from ops.diffusion.autoencoder import (
    AE_PRESETS,
    AutoencoderConfig,
    AutoencoderTrainer,
    build_autoencoder,
    decode,
    encode,
    fit_latent_scale,
    get_autoencoder_config,
    load_autoencoder,
    reconstruction_metrics,
    save_autoencoder,
)
from ops.gan.trainer import CheckpointError

RES = 32
TINY = AutoencoderConfig(
    kind="kl",
    resolution=RES,
    block_out_channels=(8, 16, 16),
    layers_per_block=1,
    latent_channels=4,
    norm_num_groups=4,
    num_vq_embeddings=64,
)
TINY_VQ = AutoencoderConfig(**{**TINY.to_dict(), "kind": "vq"})


@pytest.fixture(scope="module")
def ihc() -> torch.Tensor:
    """The scikit-image IHC tissue image ``[3, 512, 512]`` in [-1, 1]."""
    return torch.from_numpy(immunohistochemistry()).permute(2, 0, 1).float() / 127.5 - 1.0


def _crops(img: torch.Tensor, n: int, seed: int, held_out: bool = False) -> torch.Tensor:
    """``n`` random ``RES``-px crops: training crops from the left 384 columns, held-out ones from the rest."""
    rng = np.random.default_rng(seed)
    lo, hi = (384, 512 - RES) if held_out else (0, 384 - RES)
    ys, xs = rng.integers(0, 512 - RES + 1, n), rng.integers(lo, hi + 1, n)
    return torch.stack([img[:, y : y + RES, x : x + RES] for y, x in zip(ys, xs, strict=True)])


def _train(cfg: AutoencoderConfig, img: torch.Tensor, steps: int, **kwargs: object) -> AutoencoderTrainer:
    trainer = AutoencoderTrainer(cfg, **kwargs)
    for i in range(steps):
        trainer.train_step(_crops(img, 8, seed=i))
    return trainer


@pytest.fixture(scope="module")
def trained_kl(ihc: torch.Tensor) -> AutoencoderTrainer:
    return _train(TINY, ihc, steps=60, lr=2e-3)


# ---------------------------------------------------------------------------------------------- configs
def test_presets_construct_with_factor_4_and_growing_size() -> None:
    sizes = {}
    for name in ("demo", "256", "paper"):
        cfg = get_autoencoder_config(name)
        assert cfg.factor == 4 and cfg.resolution % cfg.factor == 0
        model = build_autoencoder(cfg)
        assert isinstance(model, AutoencoderKL)
        sizes[name] = sum(p.numel() for p in model.parameters())
    assert sizes["demo"] < sizes["256"] < sizes["paper"]
    assert 1e5 < sizes["demo"] < 3e6 and sizes["paper"] > 3e7  # LDM KL-f4 is ~55M
    assert get_autoencoder_config("paper").resolution >= 512


def test_config_round_trips_through_dict_and_accepts_lists() -> None:
    data = TINY.to_dict()
    assert AutoencoderConfig.from_dict(data) == TINY
    assert AutoencoderConfig.from_dict({**data, "block_out_channels": [8, 16, 16]}) == TINY
    assert TINY.latent_resolution == RES // 4


@pytest.mark.parametrize(
    ("changes", "match"),
    [
        ({"kind": "gan"}, r"AutoencoderConfig.kind: expected one of \['kl', 'vq'\], received 'gan'"),
        ({"resolution": 30}, "resolution: 30 px is not divisible by the downsampling factor 4"),
        ({"norm_num_groups": 3}, r"norm_num_groups: 3 groups must divide .* \(8, 16, 16\)"),
        ({"block_out_channels": ()}, "block_out_channels: expected a non-empty tuple"),
        ({"latent_channels": 0}, "latent_channels: expected a positive integer"),
    ],
)
def test_bad_config_names_the_option(changes: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        AutoencoderConfig(**{**TINY.to_dict(), **changes})


def test_unknown_names_list_what_exists() -> None:
    with pytest.raises(ValueError, match=r"unknown autoencoder preset 'huge'; known presets: \['256', 'demo'"):
        get_autoencoder_config("huge")
    with pytest.raises(ValueError, match=r"AutoencoderConfig.from_dict: unknown keys \['depth'\]"):
        AutoencoderConfig.from_dict({**TINY.to_dict(), "depth": 3})
    assert set(AE_PRESETS) == {"demo", "256", "paper"}


# ---------------------------------------------------------------------------------------------- learning
def test_kl_training_beats_init_on_held_out_tissue(ihc: torch.Tensor, trained_kl: AutoencoderTrainer) -> None:
    held = _crops(ihc, 16, seed=999, held_out=True)
    before = reconstruction_metrics(AutoencoderTrainer(TINY, lr=2e-3).model, held)
    after = reconstruction_metrics(trained_kl.model, held)
    assert after["psnr"] > before["psnr"] + 3
    assert after["mse"] < before["mse"] / 2 and after["l1"] < before["l1"]
    assert (trained_kl.step, trained_kl.images_seen) == (60, 480)
    assert trained_kl.model.training  # metrics restored train mode


def test_vq_training_beats_init_on_held_out_tissue(ihc: torch.Tensor) -> None:
    trainer = AutoencoderTrainer(TINY_VQ, lr=2e-3)
    held = _crops(ihc, 16, seed=999, held_out=True)
    before = reconstruction_metrics(trainer.model, held)
    for i in range(60):
        stats = trainer.train_step(_crops(ihc, 8, seed=i))
    after = reconstruction_metrics(trainer.model, held)
    assert isinstance(trainer.model, VQModel)
    assert {"l1", "mse", "vq", "loss"} <= set(stats) and "kl" not in stats
    assert stats["loss"] == pytest.approx(stats["l1"] + stats["vq"], rel=1e-5)
    assert after["psnr"] > before["psnr"] + 3


def test_train_step_reports_kl_terms(ihc: torch.Tensor) -> None:
    trainer = AutoencoderTrainer(TINY, kl_weight=0.5)
    stats = trainer.train_step(_crops(ihc, 4, seed=0))
    assert {"l1", "mse", "kl", "loss", "step", "images_seen"} <= set(stats)
    assert stats["kl"] > 0  # nats per image; weighted per pixel so kl_weight keeps LDM's meaning
    assert stats["loss"] == pytest.approx(stats["l1"] + 0.5 * stats["kl"] / (3 * RES * RES), rel=1e-5)
    assert (stats["step"], stats["images_seen"]) == (1.0, 4.0)


def test_bad_batches_are_rejected(trained_kl: AutoencoderTrainer) -> None:
    with pytest.raises(ValueError, match=r"x: expected a float tensor \[B, 3, 32, 32\]"):
        trained_kl.train_step(torch.zeros(2, 3, 64, 64))
    with pytest.raises(ValueError, match="multiples of the downsampling factor 4"):
        encode(trained_kl.model, torch.zeros(2, 3, 30, 30))
    with pytest.raises(ValueError, match=r"z: expected a float tensor \[B, 4, h, w\]"):
        decode(trained_kl.model, torch.zeros(2, 3, 8, 8))
    with pytest.raises(ValueError, match="lr: expected > 0"):
        AutoencoderTrainer(TINY, lr=0.0)


# ---------------------------------------------------------------------------------------------- latents
@pytest.mark.parametrize("kind", ["kl", "vq"])
def test_encode_decode_shapes_and_unit_latents(kind: str, ihc: torch.Tensor, trained_kl: AutoencoderTrainer) -> None:
    model = trained_kl.model if kind == "kl" else AutoencoderTrainer(TINY_VQ).model
    x = _crops(ihc, 16, seed=7, held_out=True)
    scale = fit_latent_scale(model, [x[:8], x[8:]])
    z = encode(model, x, scale)
    assert z.shape == (16, 4, RES // 4, RES // 4) and not z.requires_grad
    assert 0.8 < float(z.std()) < 1.25
    assert torch.equal(z, encode(model, x, scale))  # deterministic
    out = decode(model, z, scale)
    assert out.shape == x.shape and float(out.min()) >= -1 and float(out.max()) <= 1


# ---------------------------------------------------------------------------------------------- files
def test_resume_continues_exactly(ihc: torch.Tensor, tmp_path: Path) -> None:
    batches = [_crops(ihc, 4, seed=i) for i in range(3)]
    straight = AutoencoderTrainer(TINY, seed=3)
    for x in batches[:2]:
        straight.train_step(x)
    expected = straight.train_step(batches[2])

    first = AutoencoderTrainer(TINY, seed=3)
    for x in batches[:2]:
        first.train_step(x)
    first.latent_scale = 0.5
    first.save_checkpoint(tmp_path / "ae.pt")
    resumed = AutoencoderTrainer.from_checkpoint(tmp_path / "ae.pt", device="cpu")
    assert (resumed.step, resumed.images_seen, resumed.latent_scale) == (2, 8, 0.5)
    assert resumed.train_step(batches[2]) == expected  # kl sampling RNG and Adam moments resume too
    assert not list(tmp_path.glob(".*tmp*"))


def test_save_load_autoencoder_round_trip(ihc: torch.Tensor, trained_kl: AutoencoderTrainer, tmp_path: Path) -> None:
    x = _crops(ihc, 4, seed=5, held_out=True)
    scale = trained_kl.fit_latent_scale(x)
    path = save_autoencoder(tmp_path / "model.pt", trained_kl.model, trained_kl.cfg, scale)
    model, cfg, loaded_scale = load_autoencoder(path, device="cpu")
    assert cfg == TINY and loaded_scale == scale
    assert not model.training and not any(p.requires_grad for p in model.parameters())
    z = encode(trained_kl.model, x, scale)
    assert torch.equal(decode(model, z, loaded_scale), decode(trained_kl.model, z, scale))
    # A training checkpoint with a fitted scale loads for inference too.
    trained_kl.save_checkpoint(tmp_path / "ckpt.pt")
    assert load_autoencoder(tmp_path / "ckpt.pt")[2] == scale


def test_unusable_files_raise_checkpoint_error_naming_the_file(trained_kl: AutoencoderTrainer, tmp_path: Path) -> None:
    corrupt = tmp_path / "corrupt.pt"
    corrupt.write_bytes(b"not a torch file")
    with pytest.raises(CheckpointError, match=r"corrupt\.pt is corrupt or truncated"):
        AutoencoderTrainer.from_checkpoint(corrupt)
    with pytest.raises(CheckpointError, match=r"corrupt\.pt is corrupt or truncated"):
        load_autoencoder(corrupt)
    with pytest.raises(CheckpointError, match=r"missing\.pt does not exist"):
        AutoencoderTrainer(TINY).load_checkpoint(tmp_path / "missing.pt")

    model_file = save_autoencoder(tmp_path / "model.pt", trained_kl.model, TINY, 1.0)
    with pytest.raises(CheckpointError, match=r"model\.pt: expected format .*checkpoint/1.*, found .*autoencoder/1"):
        AutoencoderTrainer.from_checkpoint(model_file)

    trained_kl.save_checkpoint(tmp_path / "kl.pt")
    with pytest.raises(CheckpointError, match=r"kl\.pt was made for a different architecture: kind='kl'"):
        AutoencoderTrainer(TINY_VQ).load_checkpoint(tmp_path / "kl.pt")

    unfitted = AutoencoderTrainer(TINY)
    unfitted.save_checkpoint(tmp_path / "unfitted.pt")
    with pytest.raises(CheckpointError, match=r"unfitted\.pt is a training checkpoint without a latent scale"):
        load_autoencoder(tmp_path / "unfitted.pt")


def test_save_autoencoder_rejects_mismatched_arguments(trained_kl: AutoencoderTrainer, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="cfg expects a VQModel"):
        save_autoencoder(tmp_path / "m.pt", trained_kl.model, TINY_VQ, 1.0)
    with pytest.raises(ValueError, match="latent_scale must be a finite positive number"):
        save_autoencoder(tmp_path / "m.pt", trained_kl.model, TINY, float("nan"))


def test_exported_pretrained_autoencoder_is_half_size_and_decodes_alike(trained_kl, ihc, tmp_path: Path) -> None:
    from ops.diffusion.autoencoder import export_pretrained_autoencoder

    full = save_autoencoder(tmp_path / "ae.pt", trained_kl.model, TINY, 0.5)
    slim = export_pretrained_autoencoder(full, tmp_path / "ae_fp16.pt")
    assert slim.stat().st_size < 0.6 * full.stat().st_size
    (a, _, sa), (b, cfg, sb) = load_autoencoder(full), load_autoencoder(slim)
    assert cfg == TINY and sa == sb == 0.5
    x = _crops(ihc, 4, seed=99, held_out=True)
    torch.testing.assert_close(decode(a, encode(a, x, sa), sa), decode(b, encode(b, x, sb), sb), atol=2e-2, rtol=0)
