"""The mask-conditioned LDM: config checks, training lowers the loss, deterministic DDIM / DISC's SC sampling, the
null slot for unlabelled tiles, CoTrain's averaged loss, resume, and shipped copies with provenance."""

from __future__ import annotations

import json
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
    with_unlabelled,
)
from ops.diffusion.samplers import NULL_LABEL, ddim_sample, fuse, sample_latents, sc_sample, separated_latents
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


def test_sc_equals_plain_ddim_bit_for_bit_on_one_class_masks() -> None:
    model = LdmTrainer(TINY, LdmTrainConfig()).sampling_model
    uniform = torch.stack([torch.full((32, 32), 1), torch.full((32, 32), 2), torch.full((32, 32), 0)])
    seeds = np.array([1, 2, 3])
    for guidance in (1.0, 2.5):
        sc = sc_sample(model, uniform, seeds, 3, guidance)
        assert torch.equal(sc, ddim_sample(model, uniform, seeds, 3, guidance))
    with pytest.raises(ValueError, match="sampler: unknown 'euler'"):
        sample_latents(model, uniform, seeds, "euler")


def test_sc_fuses_full_trajectories_once_by_the_downsampled_mask() -> None:
    model = LdmTrainer(TINY, LdmTrainConfig()).sampling_model
    split = torch.zeros(1, 32, 32, dtype=torch.long)
    split[..., 16:] = 2  # latent columns 0-3 class 0, 4-7 class 2
    seed = np.array([4])
    fused = sc_sample(model, split, seed, 3)
    left = ddim_sample(model, torch.zeros(1, 32, 32, dtype=torch.long), seed, 3)  # all of z_T denoised as class 0
    right = ddim_sample(model, torch.full((1, 32, 32), 2), seed, 3)
    # Each region is its own trajectory's z_0 (to float noise across batch sizes); every-step fusion would not be.
    torch.testing.assert_close(fused[..., :4], left[..., :4], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(fused[..., 4:], right[..., 4:], atol=1e-5, rtol=1e-5)
    assert not torch.allclose(fused, ddim_sample(model, split, seed, 3), atol=1e-3)
    assert sample_latents(model, split.repeat(3, 1, 1), np.arange(3), "sc", 2, batch=2).shape == (3, 4, 8, 8)
    per_class = separated_latents(model, seed, 3)  # [S, K, C, h, w]: the teacher latents DISC stores
    assert per_class.shape == (1, 3, 4, 8, 8)
    torch.testing.assert_close(per_class[:, 2], right, atol=1e-5, rtol=1e-5)


def test_fuse_takes_each_cell_from_its_class_trajectory_exactly() -> None:
    gen = torch.Generator().manual_seed(0)
    latents = torch.randn(5, 4, 8, 8, generator=gen)
    owner = torch.tensor([0, 0, 0, 1, 1])
    labels = torch.tensor([0, 2, NULL_LABEL, 1, 2])
    masks = torch.zeros(2, 32, 32, dtype=torch.long)
    masks[0, :16], masks[0, 16:, :16], masks[0, 16:, 16:] = 0, 2, 255  # rows 0-3 class 0, then 2 | unlabelled
    masks[1, :, :8], masks[1, :, 8:] = 1, 2
    out = fuse(latents, owner, labels, masks)
    assert out.shape == (2, 4, 8, 8)
    assert torch.equal(out[0, :, :4], latents[0, :, :4])
    assert torch.equal(out[0, :, 4:, :4], latents[1, :, 4:, :4])
    assert torch.equal(out[0, :, 4:, 4:], latents[2, :, 4:, 4:])  # the null trajectory fills the 255 cells
    assert torch.equal(out[1, :, :, :2], latents[3, :, :, :2]) and torch.equal(out[1, :, :, 2:], latents[4, :, :, 2:])
    with pytest.raises(ValueError, match=r"latent cells of masks \[1\] are covered by"):
        fuse(latents[:4], owner[:4], labels[:4], masks)  # image 1's class-2 cells have no trajectory


def test_unlabelled_latents_train_through_the_null_condition() -> None:
    trainer = LdmTrainer(LdmConfig(**{**TINY.to_dict(), "cond_dropout": 0.0}), LdmTrainConfig(batch_size=6))
    masks = _masks(4)
    z, m = with_unlabelled(_latents_for(masks), masks, torch.randn(2, 4, 8, 8))
    assert z.shape == (6, 4, 8, 8) and m.shape == (6, 32, 32) and (m[4:] == 255).all()
    seen: list[torch.Tensor] = []
    trainer.model.register_forward_pre_hook(lambda _module, args: seen.append(args[2].clone()))
    trainer.train_step(z, m)
    cond = seen[0]
    assert torch.equal(cond[:4], mask_onehot(masks, 3)), "annotated rows condition on their masks"
    assert cond[4:].abs().sum() == 0, "unlabelled rows carry the null (all-zero) condition"


def test_cotrain_loss_is_the_mean_of_the_disc_and_real_losses() -> None:
    trainer = LdmTrainer(TINY, LdmTrainConfig(batch_size=4))
    disc_masks, real_masks = _masks(4, seed=1), _masks(4, seed=2)
    disc_z, real_z = _latents_for(disc_masks) + 0.1, _latents_for(real_masks)
    state = trainer.gen.get_state()
    trainer.model.train()
    with torch.no_grad():  # the same random draws train_step makes, in the same order
        l_disc = float(trainer.denoising_loss(disc_z, disc_masks, cond_dropout=False))
        l_real = float(trainer.denoising_loss(real_z, real_masks, cond_dropout=True))
    trainer.gen.set_state(state)
    stats = trainer.train_step(disc_z, disc_masks, cotrain=(real_z, real_masks), cond_dropout=False)
    assert stats["loss_main"] == pytest.approx(l_disc, rel=1e-6)
    assert stats["loss_cotrain"] == pytest.approx(l_real, rel=1e-6)
    assert stats["loss"] == pytest.approx((l_disc + l_real) / 2, rel=1e-6) and l_disc != pytest.approx(l_real)
    assert trainer.images_seen == 8 and trainer.step == 1


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
    slim = export_pretrained_denoiser(full, tmp_path / "slim.pt", {"commands": ["python train.py"]})
    assert slim.stat().st_size < 0.3 * full.stat().st_size
    provenance = json.loads((tmp_path / "slim.json").read_text())
    assert (provenance["images_seen"], provenance["step"], provenance["commands"]) == (4, 1, ["python train.py"])
    assert provenance["train_seconds"] > 0 and provenance["machine"]["cpu_count"] >= 1
    a, b = load_denoiser(full), load_denoiser(slim)
    z = torch.randn(2, 4, 8, 8)
    cond = mask_onehot(_masks(2), 3)
    t = torch.tensor([10, 500])
    torch.testing.assert_close(a(z, t, cond), b(z, t, cond), atol=5e-2, rtol=5e-2)
