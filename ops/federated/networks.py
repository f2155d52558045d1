"""Class-conditional GAN networks and tile classifiers, small enough to train on a hospital's CPU node.

Built the way the federated-GAN paper (shared/papers 002) describes its best setup: a three-stage convolutional
generator whose *input channels are multiplied by a learned class embedding* (the paper found this beat appending
the embedding as an extra channel), and a pluggable discriminator - a small CNN, a small ResNet or a small ViT - all
in plain torch (torchvision/timm do not import beside the pinned CPU torch, and no pretrained weights can be
downloaded here).

The discriminator has two heads on one feature vector: an adversarial score with projection conditioning
(``<embed(y), features>``, used by cGAN and WGAN-GP, which must judge "real *for this class*") and an auxiliary
class head (used by ACGAN, which instead asks D to name the class). The same backbones with a linear head are the
downstream tile classifiers.

Tensor layouts: images ``[N, 3, R, R]`` in [-1, 1]; labels ``int64 [N]``; latents ``[N, z_dim]``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ops.common.config_dict import DictConfig

LOSSES = ("cgan", "wgan-gp", "acgan")
BACKBONES = ("cnn", "resnet", "vit")
CONDITIONING = ("multiply", "concat")


@dataclass(frozen=True)
class CondGanConfig(DictConfig):
    """Architecture and objective of one conditional generator/discriminator pair (travels in checkpoints)."""

    resolution: int = 32  # image side, px; a power of two >= 8
    n_classes: int = 2  # tile classes the generator is conditioned on
    z_dim: int = 64  # noise channels (each multiplied by the class embedding)
    g_channels: int = 64  # generator channels at 4x4, halved per upsampling (floored at 16)
    d_channels: int = 32  # discriminator width (CNN/ResNet channels at full resolution; ViT token width x2)
    backbone: str = "cnn"  # discriminator backbone: cnn, resnet or vit
    loss: str = "cgan"  # cgan (non-saturating BCE), wgan-gp or acgan
    conditioning: str = "multiply"  # how the class enters G: multiply the noise channels, or concat an embedding
    gp_lambda: float = 10.0  # WGAN-GP gradient-penalty weight (Gulrajani et al.)
    n_critic: int = 2  # WGAN-GP discriminator steps per generator step
    lr: float = 2e-4  # Adam learning rate of both networks
    dropout: float = 0.1  # generator dropout (the paper's custom CNN uses it)

    def __post_init__(self) -> None:
        res = self.resolution
        if not (isinstance(res, int) and res >= 8 and res & (res - 1) == 0):
            raise ValueError(f"resolution: expected a power of two >= 8, received {res!r}")
        for name, value, known in (
            ("backbone", self.backbone, BACKBONES),
            ("loss", self.loss, LOSSES),
            ("conditioning", self.conditioning, CONDITIONING),
        ):
            if value not in known:
                raise ValueError(f"{name}: unknown {value!r}; choose one of {', '.join(known)}")
        if self.n_classes < 2:
            raise ValueError(f"n_classes: a conditional GAN needs at least 2 classes, received {self.n_classes}")
        if self.n_critic < 1:
            raise ValueError(f"n_critic: expected >= 1, received {self.n_critic}")


# ----------------------------------------------------------------------------------------------------------
# Generator.


class CondGenerator(nn.Module):
    """Noise x class embedding -> 4x4 features -> (upsample, conv, BN, LeakyReLU, dropout) per doubling -> RGB."""

    def __init__(self, cfg: CondGanConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.embed = nn.Embedding(cfg.n_classes, cfg.z_dim)
        nn.init.normal_(self.embed.weight, 1.0, 0.1)  # start near identity so early G is not class-blind
        in_dim = cfg.z_dim * (2 if cfg.conditioning == "concat" else 1)
        c = cfg.g_channels
        self.stem = nn.Sequential(nn.Linear(in_dim, c * 16), nn.LeakyReLU(0.2))
        blocks: list[nn.Module] = []
        res = 4
        while res < cfg.resolution:
            out = max(c // 2, 16)
            blocks += [
                nn.Upsample(scale_factor=2, mode="nearest"),
                nn.Conv2d(c, out, 3, padding=1),
                nn.BatchNorm2d(out),
                nn.LeakyReLU(0.2),
                nn.Dropout2d(cfg.dropout),
            ]
            c, res = out, res * 2
        self.blocks = nn.Sequential(*blocks)
        self.to_rgb = nn.Conv2d(c, 3, 3, padding=1)

    def forward(self, z: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        assert z.ndim == 2 and z.shape[1] == self.cfg.z_dim, f"z: expected [N, {self.cfg.z_dim}], got {z.shape}"
        assert y.shape == (z.shape[0],), f"y: expected [{z.shape[0]}], got {tuple(y.shape)}"
        e = self.embed(y)
        h = z * e if self.cfg.conditioning == "multiply" else torch.cat([z, e], dim=1)
        h = self.stem(h).view(z.shape[0], self.cfg.g_channels, 4, 4)
        return torch.tanh(self.to_rgb(self.blocks(h)))


# ----------------------------------------------------------------------------------------------------------
# Backbones (shared by discriminators and classifiers): image [N, 3, R, R] -> features [N, F].


class CnnBackbone(nn.Module):
    """Strided convs with LeakyReLU and no batch norm (WGAN-GP's penalty is per sample; BN would couple them)."""

    def __init__(self, resolution: int, width: int) -> None:
        super().__init__()
        layers: list[nn.Module] = [nn.Conv2d(3, width, 3, padding=1), nn.LeakyReLU(0.2)]
        c, res = width, resolution
        while res > 4:
            layers += [nn.Conv2d(c, min(c * 2, 256), 4, stride=2, padding=1), nn.LeakyReLU(0.2)]
            c, res = min(c * 2, 256), res // 2
        self.net = nn.Sequential(*layers, nn.Flatten())
        self.features = c * 16

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class _ResBlock(nn.Module):
    """Two 3x3 convs plus a 1x1 shortcut, then 2x average-pool downsampling."""

    def __init__(self, c_in: int, c_out: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, padding=1)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, padding=1)
        self.skip = nn.Conv2d(c_in, c_out, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv2(F.leaky_relu(self.conv1(F.leaky_relu(x, 0.2)), 0.2))
        return F.avg_pool2d(h + self.skip(x), 2)


class ResNetBackbone(nn.Module):
    """A small residual network (the paper's ResNet discriminator, scaled to tiles of tens of pixels)."""

    def __init__(self, resolution: int, width: int) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, width, 3, padding=1)
        blocks, c, res = [], width, resolution
        while res > 4:
            blocks.append(_ResBlock(c, min(c * 2, 256)))
            c, res = min(c * 2, 256), res // 2
        self.blocks = nn.Sequential(*blocks)
        self.features = c

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.leaky_relu(self.blocks(self.stem(x)), 0.2)
        return h.sum(dim=(2, 3))  # sum pooling keeps the critic's scale free, as SNGAN's ResNet D does


class _Attention(nn.Module):
    """Multi-head self-attention written out (softmax(QKᵀ/√d)V): the fused CPU kernel behind
    ``nn.MultiheadAttention`` has no double backward, which WGAN-GP's gradient penalty needs."""

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, dim * 3)
        self.out = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, t, dim = x.shape
        q, k, v = self.qkv(x).view(n, t, 3, self.heads, dim // self.heads).permute(2, 0, 3, 1, 4)
        att = torch.softmax(q @ k.transpose(-2, -1) / math.sqrt(dim // self.heads), dim=-1)
        return self.out((att @ v).transpose(1, 2).reshape(n, t, dim))


class _TransformerBlock(nn.Module):
    """Pre-norm encoder block: x + attention(LN(x)), then x + MLP(LN(x))."""

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.norm1, self.norm2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.attn = _Attention(dim, heads)
        self.mlp = nn.Sequential(nn.Linear(dim, dim * 2), nn.GELU(), nn.Linear(dim * 2, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class VitBackbone(nn.Module):
    """A small vision transformer: 4x4 patches, learned positions, a class token, pre-norm encoder blocks."""

    def __init__(self, resolution: int, width: int, depth: int = 2, heads: int = 4, patch: int = 4) -> None:
        super().__init__()
        dim = width * 2
        self.patch = nn.Conv2d(3, dim, patch, stride=patch)
        self.cls = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos = nn.Parameter(torch.randn(1, (resolution // patch) ** 2 + 1, dim) * 0.02)
        self.blocks = nn.Sequential(*[_TransformerBlock(dim, heads) for _ in range(depth)])
        self.norm = nn.LayerNorm(dim)
        self.features = dim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        tokens = self.patch(x).flatten(2).transpose(1, 2)  # [N, P, dim]
        tokens = torch.cat([self.cls.expand(x.shape[0], -1, -1), tokens], dim=1) + self.pos
        return self.norm(self.blocks(tokens)[:, 0])


def make_backbone(name: str, resolution: int, width: int) -> nn.Module:
    """The backbone registered under ``name``; an unknown name lists the known ones."""
    kinds = {"cnn": CnnBackbone, "resnet": ResNetBackbone, "vit": VitBackbone}
    if name not in kinds:
        raise ValueError(f"backbone: unknown {name!r}; choose one of {', '.join(kinds)}")
    return kinds[name](resolution, width)


# ----------------------------------------------------------------------------------------------------------
# Discriminator and classifier.


class CondDiscriminator(nn.Module):
    """Backbone features -> adversarial score (with class projection) and auxiliary class logits (ACGAN)."""

    def __init__(self, cfg: CondGanConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.backbone = make_backbone(cfg.backbone, cfg.resolution, cfg.d_channels)
        f = self.backbone.features
        self.adv = nn.Linear(f, 1)
        self.project = nn.Embedding(cfg.n_classes, f)  # projection discriminator (Miyato & Koyama)
        nn.init.zeros_(self.project.weight)
        self.aux = nn.Linear(f, cfg.n_classes)

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Returns ``(score [N], class_logits [N, n_classes])``; ACGAN's score ignores ``y``."""
        res = self.cfg.resolution
        assert x.shape[1:] == (3, res, res), f"x: expected [N, 3, {res}, {res}], got {tuple(x.shape)}"
        h = self.backbone(x)
        score = self.adv(h).squeeze(1)
        if self.cfg.loss != "acgan":
            score = score + (self.project(y) * h).sum(dim=1)
        return score, self.aux(h)


class TileClassifier(nn.Module):
    """A backbone with a linear head: the downstream check (real vs generated training tiles)."""

    def __init__(self, backbone: str, resolution: int, n_classes: int, width: int = 32) -> None:
        super().__init__()
        self.backbone = make_backbone(backbone, resolution, width)
        self.head = nn.Linear(self.backbone.features, n_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.backbone(x))
