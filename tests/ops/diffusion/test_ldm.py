"""The mask-conditioned LDM: config checks, training lowers the loss, deterministic DDIM / SC sampling, resume."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from ops.diffusion.denoiser import (
    LdmConfig,
    LdmTrainConfig,
    LdmTrainer,
    MaskConditionedUNet,
    export_pretrained_denoiser,
    get_ldm_config,
    load_denoiser,
    mask_onehot,
)
from ops.diffusion.samplers import ddim_sample, sample_latents, sc_sample, self_distill
from ops.evaluation.metrics import mask_agreement
from ops.gan.trainer import CheckpointError

TINY = LdmConfig(
    n_classes=3,
    resolution=32,
    latent_size=8,
    block_out_channels=(16, 32),
    attention_levels=(False, True),
    norm_num_groups=8,
    mask_token_size=4,
    mask_embed_dim=16,
)
CLASS_LATENT = torch.tensor([-1.0, 0.0, 1.0])  # the latent value a class "looks like" in the toy data


def _masks(n: int, seed: int = 0) -> torch.Tensor:
    """Two-class layouts: a random vertical split between class a and class b."""
    rng = np.random.default_rng(seed)
    masks = np.zeros((n, 32, 32), np.int64)
    for i in range(n):
        a, b = rng.choice(3, size=2, replace=False)
        cut = rng.integers(8, 24)
        masks[i, :, :cut], masks[i, :, cut:] = a, b
    return torch.from_numpy(masks)


def _latents_for(masks: torch.Tensor) -> torch.Tensor:
    """Toy latents fully determined by the mask: each latent cell carries its class's value in every channel."""
    small = masks[:, ::4, ::4]
    return CLASS_LATENT[small][:, None].repeat(1, 4, 1, 1)


def _eval_loss(trainer: LdmTrainer, z0: torch.Tensor, masks: torch.Tensor) -> float:
    """Denoising loss at fixed timesteps and noise (the training loss is too noisy to compare)."""
    gen = torch.Generator().manual_seed(1)
    t = torch.linspace(50, 900, len(z0)).long()
    noise = torch.randn(z0.shape, generator=gen)
    a = trainer.scheduler.alphas_cumprod[t].view(-1, 1, 1, 1)
    with torch.no_grad():
        pred = trainer.model.eval()(a.sqrt() * z0 + (1 - a).sqrt() * noise, t, mask_onehot(masks, 3))
    return float(((pred - noise) ** 2).mean())


def test_config_errors_name_the_option() -> None:
    with pytest.raises(ValueError, match="conditioning: unknown 'film'"):
        LdmConfig(conditioning="film")
    with pytest.raises(ValueError, match="attention_levels: expected 2 flags"):
        LdmConfig(attention_levels=(True,))
    with pytest.raises(ValueError, match="not divisible by norm_num_groups"):
        LdmConfig(block_out_channels=(20, 40))
    with pytest.raises(ValueError, match="unknown keys \\['bogus'\\]"):
        LdmConfig.from_dict({"bogus": 1})
    with pytest.raises(ValueError, match="unknown LDM preset 'huge'; known presets"):
        get_ldm_config("huge", 6)
    assert LdmConfig.from_dict(TINY.to_dict()) == TINY


def test_presets_build_real_sizes() -> None:
    demo = sum(p.numel() for p in MaskConditionedUNet(get_ldm_config("demo", 6)).parameters())
    big = sum(p.numel() for p in MaskConditionedUNet(get_ldm_config("256", 5)).parameters())
    assert 1e6 < demo < 5e6 < big
    paper = get_ldm_config("paper", 5)
    assert (paper.resolution, paper.latent_size, paper.num_train_timesteps) == (512, 128, 1000)


def test_mask_onehot_leaves_unlabelled_pixels_empty() -> None:
    masks = torch.tensor([[[0, 2], [255, 1]]])
    onehot = mask_onehot(masks, 3)
    assert onehot.shape == (1, 3, 2, 2)
    assert onehot.sum(1).tolist() == [[[1.0, 1.0], [0.0, 1.0]]]
    assert onehot[0, 2, 0, 1] == 1
    with pytest.raises(ValueError, match="class ids must be in 0..2 or 255; found \\[0, 7\\]"):
        mask_onehot(torch.tensor([[[0, 7]]]), 3)


@pytest.mark.parametrize("conditioning", ["concat", "cross_attention"])
def test_training_lowers_the_denoising_loss(conditioning: str) -> None:
    cfg = LdmConfig(**{**TINY.to_dict(), "conditioning": conditioning})
    trainer = LdmTrainer(cfg, LdmTrainConfig(batch_size=16, lr=2e-3, warmup_steps=5))
    masks = _masks(16, seed=3)
    z0 = _latents_for(masks)
    before = _eval_loss(trainer, z0, masks)
    for step in range(60):
        batch = _masks(16, seed=100 + step)
        trainer.train_step(_latents_for(batch), batch)
    after = _eval_loss(trainer, z0, masks)
    assert trainer.step == 60 and trainer.images_seen == 960
    assert after < 0.6 * before, (before, after)


def test_ddim_is_deterministic_per_seed_and_shaped() -> None:
    model = LdmTrainer(TINY, LdmTrainConfig()).sampling_model
    masks = _masks(3)
    seeds = np.array([5, 6, 7])
    a = ddim_sample(model, masks, seeds, steps=4)
    assert a.shape == (3, 4, 8, 8)
    assert torch.equal(a, ddim_sample(model, masks, seeds, steps=4))
    alone = ddim_sample(model, masks[1:2], seeds[1:2], steps=4)
    torch.testing.assert_close(alone[0], a[1], atol=1e-4, rtol=1e-4)  # a seed's sample ignores its batch mates
    other = ddim_sample(model, masks, np.array([5, 60, 7]), steps=4)
    assert not torch.allclose(other[1], a[1])
    guided = ddim_sample(model, masks, seeds, steps=4, guidance=3.0)
    assert guided.shape == a.shape and not torch.allclose(guided, a)
    with pytest.raises(ValueError, match="one seed per mask"):
        ddim_sample(model, masks, seeds[:2])
    with pytest.raises(ValueError, match="sampling steps: expected 1..1000"):
        ddim_sample(model, masks, seeds, steps=0)


def test_sc_sampler_equals_ddim_on_a_one_class_mask_and_fuses_by_region() -> None:
    model = LdmTrainer(TINY, LdmTrainConfig()).sampling_model
    uniform = torch.full((2, 32, 32), 1)
    seeds = np.array([1, 2])
    torch.testing.assert_close(
        sc_sample(model, uniform, seeds, 3), ddim_sample(model, uniform, seeds, 3), atol=1e-5, rtol=1e-5
    )
    # A split mask: the left latent columns follow the class-0 run, the right ones the class-2 run (first step).
    split = torch.zeros(1, 32, 32, dtype=torch.long)
    split[..., 16:] = 2
    fused = sc_sample(model, split, seeds[:1], 1)
    left = ddim_sample(model, torch.zeros(1, 32, 32, dtype=torch.long), seeds[:1], 1)
    right = ddim_sample(model, torch.full((1, 32, 32), 2), seeds[:1], 1)
    torch.testing.assert_close(fused[..., :4], left[..., :4], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(fused[..., 4:], right[..., 4:], atol=1e-5, rtol=1e-5)
    assert sample_latents(model, split.repeat(3, 1, 1), np.arange(3), "sc", 2, batch=2).shape == (3, 4, 8, 8)
    with pytest.raises(ValueError, match="sampler: unknown 'euler'"):
        sample_latents(model, split, seeds[:1], "euler")


def test_checkpoint_resume_continues_identically(tmp_path: Path) -> None:
    masks = _masks(8)
    z0 = _latents_for(masks)
    a = LdmTrainer(TINY, LdmTrainConfig(batch_size=8))
    a.train_step(z0, masks)
    path = a.save_checkpoint(tmp_path / "ldm.pt")
    b = LdmTrainer.from_checkpoint(path)
    assert b.step == 1 and b.images_seen == 8
    assert a.train_step(z0, masks)["loss"] == b.train_step(z0, masks)["loss"]
    for p, q in zip(a.ema.parameters(), b.ema.parameters(), strict=True):  # the EMA's decay warm-up resumed too
        assert torch.equal(p, q)
    # Step 2 averages (decay 2/11); an EMA whose warm-up restarted at 0 would have copied the raw weights instead.
    assert not all(torch.equal(p, q) for p, q in zip(b.ema.parameters(), b.model.parameters(), strict=True))
    denoiser = load_denoiser(path)
    for p, q in zip(denoiser.parameters(), LdmTrainer.from_checkpoint(path).ema.parameters(), strict=True):
        assert torch.equal(p, q)
    (tmp_path / "bad.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="bad.pt is corrupt or truncated"):
        load_denoiser(tmp_path / "bad.pt")
    with pytest.raises(CheckpointError, match="missing.pt does not exist"):
        LdmTrainer.from_checkpoint(tmp_path / "missing.pt")
    other = LdmTrainer(LdmConfig(**{**TINY.to_dict(), "n_classes": 4}), LdmTrainConfig())
    with pytest.raises(CheckpointError, match="made for another architecture"):
        other.load_checkpoint(path)


def test_self_distillation_fine_tunes_on_sc_samples() -> None:
    trainer = LdmTrainer(TINY, LdmTrainConfig(batch_size=4))
    before = [p.clone() for p in trainer.model.parameters()]
    stats = self_distill(
        trainer,
        lambda seeds: _masks(len(seeds), int(seeds[0])).numpy().astype(np.uint8),
        pairs=4,
        steps=2,
        sampling_steps=2,
    )
    assert stats["distill_pairs"] == 4 and np.isfinite(stats["distill_loss"])
    assert trainer.step == 2
    assert any(not torch.equal(p, q) for p, q in zip(before, trainer.model.parameters(), strict=True))


def test_mask_agreement_separates_conditioned_from_unconditioned_images() -> None:
    rng = np.random.default_rng(0)
    palette = np.array([[240, 240, 240], [60, 40, 160], [150, 90, 40]], np.uint8)
    masks = _masks(12).numpy()
    faithful = np.clip(palette[masks] + rng.normal(0, 20, masks.shape + (3,)), 0, 255).astype(np.uint8)
    unconditioned = faithful[rng.permutation(12)]
    good = mask_agreement(faithful, masks, faithful, masks, 3)
    bad = mask_agreement(unconditioned, masks, faithful, masks, 3)
    assert good["accuracy"] > 0.95 and good["mask_agreement"] > 1.5
    assert 0.6 < bad["mask_agreement"] < 1.4
    with pytest.raises(ValueError, match="expected images"):
        mask_agreement(faithful[:1], masks[:1], faithful, masks, 3)


def test_exported_pretrained_denoiser_loads_in_half_the_size(tmp_path: Path) -> None:
    trainer = LdmTrainer(TINY, LdmTrainConfig(batch_size=4))
    trainer.train_step(_latents_for(_masks(4)), _masks(4))
    full = trainer.save_checkpoint(tmp_path / "full.pt")
    slim = export_pretrained_denoiser(full, tmp_path / "slim.pt")
    assert slim.stat().st_size < 0.3 * full.stat().st_size
    a, b = load_denoiser(full), load_denoiser(slim)
    z = torch.randn(2, 4, 8, 8)
    cond = mask_onehot(_masks(2), 3)
    t = torch.tensor([10, 500])
    torch.testing.assert_close(a(z, t, cond), b(z, t, cond), atol=5e-2, rtol=5e-2)
