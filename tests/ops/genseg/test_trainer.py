"""The multi-level optimisation: the hypergradient w.r.t. A is right (numerically checked), the three stages move
what they should, a checkpoint resumes the run exactly, and shipped weights start a fresh run."""

import json

import numpy as np
import pytest
import torch
from torch import nn

from ops.common.file_io import CheckpointError
from ops.evaluation.losses import segmentation_loss
from ops.genseg.augment import MaskAugmentConfig
from ops.genseg.networks import GenSegConfig, SearchableGenerator
from ops.genseg.trainer import GenSegTrainConfig, GenSegTrainer, export_pretrained_genseg, hypergradient

TOY = GenSegConfig(n_classes=2, resolution=8, base_channels=2, channel_max=2, depth=1, noise_channels=0)


def _toy():
    """A tiny generator with a non-uniform A, a one-conv segmenter, and real / generated / validation batches."""
    torch.manual_seed(0)
    g = SearchableGenerator(TOY).double()
    with torch.no_grad():
        for a in g.arch_parameters():
            a.copy_(torch.randn(a.shape, dtype=torch.float64))
    s = nn.Conv2d(3, 2, 3, padding=1).double()
    real = (torch.randn(2, 3, 8, 8, dtype=torch.float64), torch.randint(0, 2, (2, 8, 8)))
    val = (torch.randn(2, 3, 8, 8, dtype=torch.float64), torch.randint(0, 2, (2, 8, 8)))
    return g, s, real, torch.randint(0, 2, (2, 8, 8)), val


def _val_after_step(g, s, real, masks, val, xi, gamma=1.0) -> float:
    """L_val(S − ξ∇_S L_train(S, G_A)) by plain first-order code, for numerical differentiation in A."""
    params = list(s.parameters())
    loss = segmentation_loss(s(real[0]), real[1], "ce") + gamma * segmentation_loss(s(g.paint(masks)), masks, "ce")
    grads = torch.autograd.grad(loss, params)
    weight, bias = (p.detach() - xi * gr for p, gr in zip(params, grads, strict=True))
    logits = nn.functional.conv2d(val[0], weight, bias, padding=1)
    return float(segmentation_loss(logits, val[1], "ce"))


def test_hypergradient_is_nonzero_and_matches_finite_differences():
    g, s, real, masks, val = _toy()
    xi = 0.5
    exact, l_val = hypergradient(s, g, real, masks, None, val, xi, method="exact")
    flat = torch.cat([e.flatten() for e in exact])
    assert flat.abs().max() > 1e-6, "the validation loss reaches A only through the unrolled step; it must not be 0"
    assert l_val == pytest.approx(_val_after_step(g, s, real, masks, val, xi), rel=1e-10)

    numeric, h = [], 1e-5
    for a in g.arch_parameters():
        for i in range(a.numel()):
            with torch.no_grad():
                a.view(-1)[i] += h
            up = _val_after_step(g, s, real, masks, val, xi)
            with torch.no_grad():
                a.view(-1)[i] -= 2 * h
            down = _val_after_step(g, s, real, masks, val, xi)
            with torch.no_grad():
                a.view(-1)[i] += h
            numeric.append((up - down) / (2 * h))
    torch.testing.assert_close(flat, torch.tensor(numeric, dtype=torch.float64), rtol=1e-4, atol=1e-9)

    darts, _ = hypergradient(s, g, real, masks, None, val, xi, method="finite_difference")
    torch.testing.assert_close(torch.cat([d.flatten() for d in darts]), flat, rtol=1e-3, atol=1e-8)


TINY = GenSegConfig(n_classes=3, resolution=16, base_channels=4, channel_max=8, depth=2, disc_channels=4)


def _batches(seed: int):
    gen = torch.Generator().manual_seed(seed)
    x = torch.rand((4, 3, 16, 16), generator=gen) * 2 - 1
    y = torch.randint(0, 3, (4, 16, 16), generator=gen)
    return x, y, x.flip(0), y.flip(0), torch.rand((4, 3, 16, 16), generator=gen) * 2 - 1


def _trainer(**overrides) -> GenSegTrainer:
    cfg = GenSegTrainConfig(batch_size=4, seg_base_channels=4, **overrides)
    return GenSegTrainer(TINY, cfg, MaskAugmentConfig(), "cpu")


def test_search_moves_a_and_the_ablation_keeps_it_uniform():
    searching, plain = _trainer(), _trainer(search=False)
    g_before = [p.detach().clone() for p in plain.generator.weight_parameters()]
    for step in range(2):
        stats = searching.train_step(*_batches(step))
        plain_stats = plain.train_step(*_batches(step))
    assert {"d_loss", "du_loss", "g_adv", "g_l1", "s_real", "s_generated", "val_loss"} <= set(stats)
    assert np.isfinite(list(stats.values())).all() and stats["hypergrad_norm"] > 0
    assert any(a.abs().max() > 0 for a in searching.generator.arch_parameters()), "stage III moved A"
    assert all((a == 0).all() for a in plain.generator.arch_parameters()), "search=False: A stays uniform"
    assert "val_loss" not in plain_stats
    assert any(not torch.equal(a, b) for a, b in zip(g_before, plain.generator.weight_parameters(), strict=True))
    assert (searching.step, searching.images_seen) == (2, 8)


def test_pretraining_uses_only_unlabelled_tiles_and_needs_them():
    t = _trainer(pretrain_steps=1)
    assert set(t.train_step(*_batches(0))) == {"du_loss", "g_unlabelled"}
    assert "g_l1" in t.train_step(*_batches(1)), "after pre-training the MLO runs"
    x, y, vx, vy, _ = _batches(0)
    with pytest.raises(ValueError, match="no unlabelled tiles were passed"):
        t.train_step(x, y, vx, vy)


def test_checkpoint_resumes_exactly(tmp_path):
    a = _trainer(hypergrad="finite_difference")
    a.train_step(*_batches(0))
    a.save_checkpoint(tmp_path / "ckpt.pt")
    a.train_step(*_batches(1))
    b = GenSegTrainer.from_checkpoint(tmp_path / "ckpt.pt")
    assert b.step == 1 and b.train_cfg.hypergrad == "finite_difference"
    b.train_step(*_batches(1))
    for p, q in zip(a.generator.parameters(), b.generator.parameters(), strict=True):
        torch.testing.assert_close(p, q)
    for p, q in zip(a.segmenter.parameters(), b.segmenter.parameters(), strict=True):
        torch.testing.assert_close(p, q)


def test_shipped_weights_carry_the_networks_not_the_run(tmp_path):
    a = _trainer()
    a.train_step(*_batches(0))
    full = a.save_checkpoint(tmp_path / "ckpt.pt")
    slim = export_pretrained_genseg(full, tmp_path / "genseg_tiny.pt", {"commands": ["dagster asset materialize"]})
    assert slim.stat().st_size < 0.6 * full.stat().st_size
    record = json.loads((tmp_path / "genseg_tiny.json").read_text())
    assert (record["step"], record["images_seen"], record["commands"]) == (1, 4, ["dagster asset materialize"])
    b = _trainer()
    b.load_pretrained(slim)
    assert (b.step, b.images_seen) == (0, 0) and not b.opt_g.state, "a fine-tune is a new run"
    for name in ("generator", "disc", "disc_u", "segmenter"):
        for p, q in zip(getattr(a, name).parameters(), getattr(b, name).parameters(), strict=True):
            torch.testing.assert_close(p, q, atol=1e-2, rtol=1e-2)
    other = GenSegTrainer(GenSegConfig(**{**TINY.to_dict(), "n_classes": 4}), b.train_cfg, MaskAugmentConfig())
    with pytest.raises(CheckpointError, match="pick the matching preset"):
        other.load_pretrained(slim)
