"""Conditional GANs: the WGAN-GP penalty, ACGAN's class loss, every objective x discriminator, class-true samples."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from ops.federated.classifier import evaluate, train_classifier
from ops.federated.networks import CondDiscriminator, CondGanConfig, CondGenerator
from ops.federated.training import LocalTraining, augment, d_loss, g_loss, gradient_penalty, sample, train_local


class LinearCritic(nn.Module):
    """score = x·w: its input gradient is w for every sample, so the penalty is (‖w‖ − 1)² by hand."""

    def __init__(self, w: torch.Tensor) -> None:
        super().__init__()
        self.w = nn.Parameter(w)

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, None]:
        return x.flatten(1) @ self.w, None


def test_gradient_penalty_equals_hand_computation():
    w = torch.tensor([3.0, 4.0, 0.0, 0.0])  # ‖w‖ = 5 → (5 − 1)² = 16
    real, fake = torch.randn(5, 1, 2, 2), torch.randn(5, 1, 2, 2)
    eps = torch.rand(5, 1, 1, 1)
    gp = gradient_penalty(LinearCritic(w), real, fake, torch.zeros(5, dtype=torch.long), eps)
    assert gp.item() == pytest.approx(16.0)
    assert gradient_penalty(LinearCritic(w / 5), real, fake, torch.zeros(5, dtype=torch.long), eps).item() == (
        pytest.approx(0.0, abs=1e-10)
    )


def test_acgan_auxiliary_loss_uses_the_class():
    torch.manual_seed(0)
    cfg = CondGanConfig(resolution=16, loss="acgan", d_channels=8)
    D = CondDiscriminator(cfg)
    fake = torch.rand(6, 3, 16, 16) * 2 - 1
    y = torch.tensor([0, 1, 0, 1, 0, 1])
    _, logits = D(fake, y)
    loss, parts = g_loss(D, fake, y)
    assert parts["g_aux"] == pytest.approx(nn.functional.cross_entropy(logits, y).item(), rel=1e-5)
    _, flipped = g_loss(D, fake, 1 - y)
    assert flipped["g_aux"] != pytest.approx(parts["g_aux"]), "the auxiliary term must depend on the class"
    assert flipped["g_adv"] == pytest.approx(parts["g_adv"]), "ACGAN's real/fake score ignores the class"
    _, d_parts = d_loss(D, fake, fake, y, torch.Generator().manual_seed(0))
    assert "d_aux" in d_parts


@pytest.mark.parametrize("loss", ["cgan", "wgan-gp", "acgan"])
@pytest.mark.parametrize("backbone", ["cnn", "resnet", "vit"])
def test_every_objective_trains_with_every_discriminator(loss, backbone):
    cfg = CondGanConfig(resolution=16, loss=loss, backbone=backbone, g_channels=16, d_channels=8)
    torch.manual_seed(0)
    G, D = CondGenerator(cfg), CondDiscriminator(cfg)
    before = [p.detach().clone() for p in G.parameters()]
    images = np.random.default_rng(0).integers(0, 256, (8, 16, 16, 3), dtype=np.uint8)
    stats = train_local(G, D, images, np.array([0, 1] * 4), LocalTraining(epochs=2, batch_size=4))
    assert stats["steps"] == 4 and all(np.isfinite(v) for v in stats.values())
    assert any(not torch.equal(a, b) for a, b in zip(before, G.parameters(), strict=True))
    if loss == "wgan-gp":
        assert "d_gp" in stats


def test_generator_multiplies_the_class_embedding_into_its_input():
    cfg = CondGanConfig(resolution=8, g_channels=16)
    G = CondGenerator(cfg).eval()
    z = torch.randn(2, cfg.z_dim)
    with torch.no_grad():
        G.embed.weight[1] = 0.0  # class 1 zeroes every input channel: its image no longer depends on z
        out = G(z, torch.tensor([1, 1]))
    assert torch.allclose(out[0], out[1])


def test_bad_options_name_the_option():
    with pytest.raises(ValueError, match="backbone: unknown 'swin'; choose one of cnn, resnet, vit"):
        CondGanConfig(backbone="swin")
    with pytest.raises(ValueError, match="loss: unknown"):
        CondGanConfig(loss="hinge")
    with pytest.raises(ValueError, match="resolution: expected a power of two"):
        CondGanConfig(resolution=24)


def test_augment_keeps_shape_and_rotates():
    x = torch.rand(4, 3, 16, 16)
    y = augment(x, torch.Generator().manual_seed(0))
    assert y.shape == x.shape and not torch.allclose(x, y)


def toy_tiles(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Two visibly different classes: class 0 reddish, class 1 bluish, with texture noise."""
    rng = np.random.default_rng(seed)
    labels = np.arange(n) % 2
    base = np.where(labels[:, None] == 0, [200, 60, 80], [70, 80, 200])[:, None, None, :]
    images = np.clip(base + rng.normal(0, 25, (n, 16, 16, 3)), 0, 255).astype(np.uint8)
    return images, labels


def test_conditional_samples_respect_the_class():
    """A classifier trained on real tiles labels the generator's class-c samples as c well above chance."""
    images, labels = toy_tiles(64, seed=1)
    cfg = CondGanConfig(resolution=16, g_channels=32, d_channels=16, lr=2e-3)
    torch.manual_seed(0)
    G, D = CondGenerator(cfg), CondDiscriminator(cfg)
    train_local(G, D, images, labels, LocalTraining(epochs=40, batch_size=16, augment=False))
    clf = train_classifier(images, labels, 2, steps=60, batch_size=16)
    wanted = np.arange(40) % 2
    agreement = evaluate(clf, sample(G, wanted, seed=3), wanted, 2).accuracy
    assert agreement > 0.8, f"samples agree with their class only {agreement:.2f} of the time"
