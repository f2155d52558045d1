"""A compact StyleGAN2 generator and discriminator (skip generator, residual discriminator).

Modelled on NVlabs stylegan2-ada-pytorch ``training/networks.py`` and built the same way, bottom-up:
functions → layers → blocks → networks. It keeps what matters for HDGAN-style feature extraction and for
training on a CPU: a mapping network with a running ``w_avg`` for truncation, modulated/demodulated
convolutions, per-layer noise, skip-architecture ToRGB, equalized learning rate, and a residual discriminator
with minibatch-stddev. Left out: conditioning, fp16 and conv clamping, custom CUDA kernels.

Tensor layouts: images and feature maps are ``[N, C, H, W]``; latents ``z`` are ``[N, z_dim]``;
per-layer styles ``ws`` are ``[N, num_ws, w_dim]``.

Example:
    >>> cfg = get_gan_config("demo")
    >>> G = Generator(cfg)
    >>> img, feats = G(torch.randn(2, cfg.z_dim), return_features=True)
    >>> [f.shape[1] for f in feats] == G.block_channels
    True
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ops.common.config_dict import DictConfig

NOISE_MODES = ("random", "const", "none")

# ----------------------------------------------------------------------------------------------------------
# Configuration and presets.


@dataclass(frozen=True)
class GanConfig(DictConfig):
    """Architecture of one StyleGAN2 generator/discriminator pair.

    Channels per resolution come from ``min(channel_base // res, channel_max)`` for both networks, so
    ``channel_base`` sets the width of the high-resolution blocks and ``channel_max`` caps the low ones.
    """

    resolution: int  # output image side, px; a power of two >= 8
    z_dim: int = 128  # input latent z size
    w_dim: int = 128  # intermediate latent w size (style vector)
    mapping_layers: int = 2  # fully connected layers in the mapping network z → w
    channel_base: int = 4096  # channels at resolution res = min(channel_base // res, channel_max)
    channel_max: int = 128  # upper bound on channels of any block
    img_channels: int = 3  # colour channels of the images (3 = RGB)
    mapping_lr_multiplier: float = 0.01  # learning-rate multiplier of mapping layers (equalized lr)
    w_avg_beta: float = 0.995  # decay of the running average of w, used for truncation ψ
    mbstd_group_size: int = 4  # discriminator minibatch-stddev group size, samples; 1 = no cross-sample signal
    mbstd_channels: int = 1  # feature channels the minibatch-stddev layer appends

    def __post_init__(self) -> None:
        res = self.resolution
        if not (isinstance(res, int) and res >= 8 and res & (res - 1) == 0):
            raise ValueError(f"GanConfig.resolution: expected a power of two >= 8, received {res!r}")
        for name in (
            "z_dim",
            "w_dim",
            "mapping_layers",
            "channel_base",
            "channel_max",
            "img_channels",
            "mbstd_group_size",
            "mbstd_channels",
        ):
            value = getattr(self, name)
            if not (isinstance(value, int) and value >= 1):
                raise ValueError(f"GanConfig.{name}: expected a positive integer, received {value!r}")
        if self.channel_base // res < 1:
            raise ValueError(
                f"GanConfig.channel_base: {self.channel_base} gives 0 channels at {res} px; "
                f"use channel_base >= resolution ({res})"
            )
        if self.channels(4) % self.mbstd_channels:
            raise ValueError(
                f"GanConfig.mbstd_channels: {self.mbstd_channels} must divide the {self.channels(4)} channels at 4 px"
            )
        if not 0.0 <= self.w_avg_beta < 1.0:
            raise ValueError(f"GanConfig.w_avg_beta: expected a value in [0, 1), received {self.w_avg_beta!r}")

    def channels(self, res: int) -> int:
        """Feature channels of the block working at ``res`` px."""
        return min(self.channel_base // res, self.channel_max)

    @property
    def block_resolutions(self) -> list[int]:
        """Resolutions of the synthesis blocks, lowest first: ``[4, 8, …, resolution]``."""
        return [2**i for i in range(2, int(math.log2(self.resolution)) + 1)]


GAN_PRESETS: dict[str, GanConfig] = {
    # 64 px, 0.80M generator / 0.82M discriminator parameters: trains on 2 CPU cores at ~30-40 img/s
    # (batch 16). Blocks b4…b64 have 104/104/104/64/32 channels.
    "demo": GanConfig(resolution=64, z_dim=128, w_dim=128, mapping_layers=2, channel_base=2048, channel_max=104),
    # 256 px benchmarking size: b4…b256 = 256/256/256/256/128/64/32 channels (5.9M generator parameters).
    "256": GanConfig(resolution=256, z_dim=256, w_dim=256, mapping_layers=4, channel_base=8192, channel_max=256),
    # HDGAN: StyleGAN2-ADA at 4096 px, channel_base 32768, channel_max 512, 8 mapping layers.
    # Blocks b4…b4096 = 512/512/512/512/512/256/128/64/32/16/8 channels. The last five blocks (256…4096 px)
    # output 128+64+32+16+8 = 248 channels; HDGAN's 496 features/pixel count both conv layers of each of those
    # blocks (2 × 248). `Generator.synthesis(return_features=True)` returns the block outputs (248).
    "paper": GanConfig(resolution=4096, z_dim=512, w_dim=512, mapping_layers=8, channel_base=32768, channel_max=512),
}


def get_gan_config(name: str) -> GanConfig:
    """Look up a preset by name.

    Raises:
        ValueError: ``name`` is not a preset; the message lists the known names.
    """
    if name not in GAN_PRESETS:
        raise ValueError(f"unknown GAN preset {name!r}; known presets: {sorted(GAN_PRESETS)}")
    return GAN_PRESETS[name]


# ----------------------------------------------------------------------------------------------------------
# Functions.


def normalize_2nd_moment(x: torch.Tensor, dim: int = 1, eps: float = 1e-8) -> torch.Tensor:
    """Scale each vector to unit root-mean-square so that z's length does not matter."""
    return x * (x.square().mean(dim=dim, keepdim=True) + eps).rsqrt()


def bias_act(x: torch.Tensor, b: torch.Tensor | None, act: str = "linear", gain: float = 1.0) -> torch.Tensor:
    """Add a per-channel bias, apply ``act`` ('linear' | 'lrelu'), multiply by ``gain``.

    The lrelu gain sqrt(2) keeps activation variance constant, as equalized learning rate assumes.
    """
    if b is not None:
        x = x + b.reshape([1, -1] + [1] * (x.ndim - 2))
    if act == "lrelu":
        x = F.leaky_relu(x, 0.2)
    elif act != "linear":
        raise ValueError(f"bias_act: act must be 'linear' or 'lrelu', received {act!r}")
    return x * gain if gain != 1 else x


def _pad1(x: torch.Tensor, dim: int) -> torch.Tensor:
    """Zero-pad one pixel on both sides of spatial axis ``dim`` (2 = H, 3 = W)."""
    return F.pad(x, [1, 1] if dim == 3 else [0, 0, 1, 1])


def _upsample_axis(x: torch.Tensor, dim: int) -> torch.Tensor:
    """Double axis ``dim``: even outputs (x[i-1] + 3·x[i]) / 4, odd outputs (3·x[i] + x[i+1]) / 4."""
    n = x.shape[dim]
    xp = _pad1(x, dim)
    prev, cur, nxt = xp.narrow(dim, 0, n), xp.narrow(dim, 1, n), xp.narrow(dim, 2, n)
    even, odd = (prev + 3 * cur) * 0.25, (3 * cur + nxt) * 0.25
    return torch.stack([even, odd], dim=dim + 1).flatten(dim, dim + 1)


def _downsample_axis(x: torch.Tensor, dim: int) -> torch.Tensor:
    """Halve axis ``dim``: out[k] = (xp[2k] + 3·xp[2k+1] + 3·xp[2k+2] + xp[2k+3]) / 8, xp zero-padded by 1."""
    m = x.shape[dim] // 2
    xp = _pad1(x, dim)
    even, odd = (xp[:, :, ::2], xp[:, :, 1::2]) if dim == 2 else (xp[..., ::2], xp[..., 1::2])
    return (
        even.narrow(dim, 0, m) + 3 * odd.narrow(dim, 0, m) + 3 * even.narrow(dim, 1, m) + odd.narrow(dim, 1, m)
    ) * 0.125


def upsample2d(x: torch.Tensor) -> torch.Tensor:
    """2× upsampling ``[N, C, H, W] → [N, C, 2H, 2W]`` with StyleGAN2's separable [1, 3, 3, 1] filter.

    Same output as NVlabs ``upsample2d`` (zero insertion, FIR [1, 3, 3, 1]·2 per axis, zero padding), written
    as shifted-slice arithmetic: on CPUs this is ~5× faster than depthwise convolution, and it supports the
    double backward that R1 needs.
    """
    assert x.ndim == 4, f"x: expected [N, C, H, W], received {tuple(x.shape)}"
    return _upsample_axis(_upsample_axis(x, 2), 3)


def downsample2d(x: torch.Tensor) -> torch.Tensor:
    """2× anti-aliased downsampling ``[N, C, H, W] → [N, C, H/2, W/2]`` with the [1, 3, 3, 1]/8 filter.

    Same output as NVlabs ``downsample2d`` (zero padding of 1 px), written as shifted-slice arithmetic.
    """
    assert x.ndim == 4 and x.shape[2] % 2 == 0 and x.shape[3] % 2 == 0, f"x: unexpected {tuple(x.shape)}"
    return _downsample_axis(_downsample_axis(x, 2), 3)


def modulated_conv2d(
    x: torch.Tensor,  # [N, C_in, H, W] input features
    weight: torch.Tensor,  # [C_out, C_in, k, k] shared convolution weight
    styles: torch.Tensor,  # [N, C_in] per-sample input-channel scales
    noise: torch.Tensor | None = None,  # broadcastable to [N, 1, H, W]; added after demodulation
    demodulate: bool = True,  # rescale so every output channel has unit expected variance
) -> torch.Tensor:
    """StyleGAN2 weight (de)modulation, implemented by scaling activations instead of weights.

    Scaling the input by ``styles`` and the output by the demodulation coefficients is mathematically the
    same as convolving with per-sample modulated weights, but keeps one shared weight, which is faster on
    CPUs than grouped convolution (the "non-fused" path of NVlabs).
    """
    N, C_in, _, _ = x.shape
    C_out, _, kh, kw = weight.shape
    assert styles.shape == (N, C_in), f"styles: expected {(N, C_in)}, received {tuple(styles.shape)}"
    if kh == kw == 1:  # 1×1 (ToRGB): a batched matmul with per-sample weights beats conv2d on CPUs
        w = weight.reshape(1, C_out, C_in) * styles.reshape(N, 1, C_in)
        x = torch.bmm(w, x.reshape(N, C_in, -1)).reshape(N, C_out, *x.shape[2:])
    else:
        x = x * styles.reshape(N, C_in, 1, 1)
        x = F.conv2d(x, weight, padding=kh // 2)
    if demodulate:
        dcoefs = (weight.unsqueeze(0) * styles.reshape(N, 1, C_in, 1, 1)).square().sum(dim=[2, 3, 4]) + 1e-8
        x = x * dcoefs.rsqrt().reshape(N, C_out, 1, 1)
    if noise is not None:
        x = x + noise
    return x


# ----------------------------------------------------------------------------------------------------------
# Layers.


class FullyConnectedLayer(nn.Module):
    """Dense layer with equalized learning rate: weights stored as N(0, 1) and scaled at run time."""

    def __init__(
        self,
        in_features: int,  # input size
        out_features: int,  # output size
        bias: bool = True,  # add a learned bias
        activation: str = "linear",  # 'linear' | 'lrelu'
        lr_multiplier: float = 1.0,  # learning-rate multiplier (0.01 in the mapping network)
        bias_init: float = 0.0,  # initial bias value (1 for style affines, so styles start near 1)
    ) -> None:
        super().__init__()
        self.activation = activation
        self.weight = nn.Parameter(torch.randn(out_features, in_features) / lr_multiplier)
        self.bias = nn.Parameter(torch.full([out_features], float(bias_init))) if bias else None
        self.weight_gain = lr_multiplier / math.sqrt(in_features)
        self.bias_gain = lr_multiplier

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        assert x.ndim == 2 and x.shape[1] == self.weight.shape[1], f"expected [N, {self.weight.shape[1]}]"
        w = self.weight * self.weight_gain
        b = self.bias * self.bias_gain if self.bias is not None else None
        if self.activation == "linear":
            return F.linear(x, w, b)
        gain = math.sqrt(2) if self.activation == "lrelu" else 1.0
        return bias_act(F.linear(x, w), b, self.activation, gain)


class Conv2dLayer(nn.Module):
    """Discriminator convolution with equalized learning rate and optional 2× anti-aliased downsampling."""

    def __init__(
        self,
        in_channels: int,  # input channels
        out_channels: int,  # output channels
        kernel_size: int,  # square kernel width, px
        bias: bool = True,  # add a learned bias
        activation: str = "linear",  # 'linear' | 'lrelu'
        down: bool = False,  # halve the resolution (blur, decimate, then convolve)
    ) -> None:
        super().__init__()
        self.activation = activation
        self.down = down
        self.act_gain = math.sqrt(2) if activation == "lrelu" else 1.0
        self.weight = nn.Parameter(torch.randn(out_channels, in_channels, kernel_size, kernel_size))
        self.bias = nn.Parameter(torch.zeros(out_channels)) if bias else None
        self.weight_gain = 1 / math.sqrt(in_channels * kernel_size**2)

    def forward(self, x: torch.Tensor, gain: float = 1.0) -> torch.Tensor:
        assert x.ndim == 4 and x.shape[1] == self.weight.shape[1], f"expected [N, {self.weight.shape[1]}, H, W]"
        if self.down:
            x = downsample2d(x)
        x = F.conv2d(x, self.weight * self.weight_gain, padding=self.weight.shape[-1] // 2)
        return bias_act(x, self.bias, self.activation, self.act_gain * gain)


class MappingNetwork(nn.Module):
    """z → w: normalise z, then an MLP; keeps a running average of w for the truncation trick."""

    def __init__(
        self,
        z_dim: int,  # input latent size
        w_dim: int,  # output latent size
        num_ws: int,  # copies of w to broadcast (one per synthesis layer)
        num_layers: int,  # fully connected layers
        lr_multiplier: float = 0.01,  # learning-rate multiplier of every layer
        w_avg_beta: float = 0.995,  # decay of the running w average
    ) -> None:
        super().__init__()
        self.z_dim, self.w_dim, self.num_ws, self.w_avg_beta = z_dim, w_dim, num_ws, w_avg_beta
        features = [z_dim] + [w_dim] * num_layers
        self.layers = nn.ModuleList(
            FullyConnectedLayer(features[i], features[i + 1], activation="lrelu", lr_multiplier=lr_multiplier)
            for i in range(num_layers)
        )
        self.register_buffer("w_avg", torch.zeros(w_dim))

    def forward(
        self,
        z: torch.Tensor,  # [N, z_dim] latents
        psi: float = 1.0,  # truncation: 1 = off, 0 = every sample becomes w_avg
        truncation_cutoff: int | None = None,  # truncate only the first this many ws; None = all
        update_w_avg: bool = False,  # track the running w average (training only)
    ) -> torch.Tensor:
        assert z.ndim == 2 and z.shape[1] == self.z_dim, f"z: expected [N, {self.z_dim}], got {tuple(z.shape)}"
        x = normalize_2nd_moment(z.to(torch.float32))
        for layer in self.layers:
            x = layer(x)
        if update_w_avg:
            self.w_avg.copy_(x.detach().mean(dim=0).lerp(self.w_avg, self.w_avg_beta))
        ws = x.unsqueeze(1).repeat(1, self.num_ws, 1)
        if psi != 1:
            cutoff = self.num_ws if truncation_cutoff is None else truncation_cutoff
            ws[:, :cutoff] = self.w_avg.lerp(ws[:, :cutoff], psi)
        return ws


class SynthesisLayer(nn.Module):
    """Modulated 3×3 convolution + per-pixel noise + bias + lrelu; optionally upsamples 2× first."""

    def __init__(
        self,
        in_channels: int,  # input channels
        out_channels: int,  # output channels
        w_dim: int,  # style vector size
        resolution: int,  # output resolution, px (size of the constant noise buffer)
        up: bool = False,  # upsample the input 2× before the convolution
        kernel_size: int = 3,  # square kernel width, px
    ) -> None:
        super().__init__()
        self.resolution, self.up = resolution, up
        self.affine = FullyConnectedLayer(w_dim, in_channels, bias_init=1)
        self.weight = nn.Parameter(torch.randn(out_channels, in_channels, kernel_size, kernel_size))
        self.bias = nn.Parameter(torch.zeros(out_channels))
        self.noise_strength = nn.Parameter(torch.zeros([]))
        self.register_buffer("noise_const", torch.randn(resolution, resolution))

    def forward(self, x: torch.Tensor, w: torch.Tensor, noise_mode: str = "random") -> torch.Tensor:
        N = x.shape[0]
        in_res = self.resolution // 2 if self.up else self.resolution
        assert x.shape[1:] == (self.weight.shape[1], in_res, in_res), f"x: unexpected shape {tuple(x.shape)}"
        styles = self.affine(w)
        noise = None
        if noise_mode == "random":
            noise = torch.randn(N, 1, self.resolution, self.resolution, device=x.device) * self.noise_strength
        elif noise_mode == "const":
            noise = self.noise_const * self.noise_strength
        if self.up:
            x = upsample2d(x)
        x = modulated_conv2d(x, self.weight, styles, noise=noise, demodulate=True)
        return bias_act(x, self.bias, "lrelu", math.sqrt(2))


class ToRGBLayer(nn.Module):
    """Modulated 1×1 convolution to colour, without demodulation (the output scale must be learnable)."""

    def __init__(
        self,
        in_channels: int,  # input feature channels
        out_channels: int,  # image channels
        w_dim: int,  # style vector size
    ) -> None:
        super().__init__()
        self.affine = FullyConnectedLayer(w_dim, in_channels, bias_init=1)
        self.weight = nn.Parameter(torch.randn(out_channels, in_channels, 1, 1))
        self.bias = nn.Parameter(torch.zeros(out_channels))
        self.weight_gain = 1 / math.sqrt(in_channels)

    def forward(self, x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        styles = self.affine(w) * self.weight_gain
        x = modulated_conv2d(x, self.weight, styles, demodulate=False)
        return bias_act(x, self.bias)


# ----------------------------------------------------------------------------------------------------------
# Blocks.


class SynthesisBlock(nn.Module):
    """One resolution of the generator: (const | 2× up-conv) → conv → ToRGB added to the upsampled image."""

    def __init__(
        self,
        in_channels: int,  # input channels; 0 = first block, starts from a learned constant
        out_channels: int,  # output channels
        w_dim: int,  # style vector size
        resolution: int,  # output resolution, px
        img_channels: int,  # image channels
    ) -> None:
        super().__init__()
        self.in_channels, self.out_channels, self.resolution = in_channels, out_channels, resolution
        if in_channels == 0:
            self.const = nn.Parameter(torch.randn(out_channels, resolution, resolution))
        else:
            self.conv0 = SynthesisLayer(in_channels, out_channels, w_dim, resolution, up=True)
        self.conv1 = SynthesisLayer(out_channels, out_channels, w_dim, resolution)
        self.torgb = ToRGBLayer(out_channels, img_channels, w_dim)
        self.num_conv = 1 if in_channels == 0 else 2
        self.num_torgb = 1

    def forward(
        self,
        x: torch.Tensor | None,  # [N, in_channels, res/2, res/2]; None for the first block
        img: torch.Tensor | None,  # [N, img_channels, res/2, res/2]; None for the first block
        ws: torch.Tensor,  # [N, num_conv + num_torgb, w_dim]
        noise_mode: str,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        assert ws.shape[1] == self.num_conv + self.num_torgb, f"ws: unexpected shape {tuple(ws.shape)}"
        w_iter = iter(ws.unbind(dim=1))
        if self.in_channels == 0:
            x = self.const.unsqueeze(0).repeat(ws.shape[0], 1, 1, 1)
        else:
            x = self.conv0(x, next(w_iter), noise_mode)
        x = self.conv1(x, next(w_iter), noise_mode)
        y = self.torgb(x, next(w_iter))
        img = y if img is None else upsample2d(img) + y
        return x, img


class DiscriminatorBlock(nn.Module):
    """One resolution of the discriminator: residual (conv → conv↓) + (1×1 conv↓) skip, halving the size."""

    def __init__(
        self,
        in_channels: int,  # input channels; 0 = first block, reads the image through FromRGB
        tmp_channels: int,  # channels inside the block
        out_channels: int,  # output channels (at half resolution)
        img_channels: int,  # image channels
    ) -> None:
        super().__init__()
        self.in_channels = in_channels
        if in_channels == 0:
            self.fromrgb = Conv2dLayer(img_channels, tmp_channels, kernel_size=1, activation="lrelu")
        self.conv0 = Conv2dLayer(tmp_channels, tmp_channels, kernel_size=3, activation="lrelu")
        self.conv1 = Conv2dLayer(tmp_channels, out_channels, kernel_size=3, activation="lrelu", down=True)
        self.skip = Conv2dLayer(tmp_channels, out_channels, kernel_size=1, bias=False, down=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.in_channels == 0:
            x = self.fromrgb(x)
        y = self.skip(x, gain=math.sqrt(0.5))
        x = self.conv1(self.conv0(x), gain=math.sqrt(0.5))
        return y + x


class MinibatchStdLayer(nn.Module):
    """Append the standard deviation across small groups of samples, so D can see a lack of variety."""

    def __init__(
        self,
        group_size: int,  # samples per group (reduced to a divisor of the batch size when needed)
        num_channels: int = 1,  # feature channels appended
    ) -> None:
        super().__init__()
        self.group_size, self.num_channels = group_size, num_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        N, C, H, W = x.shape
        G = math.gcd(self.group_size, N)  # any batch size works; groups never straddle the batch end
        Fc = self.num_channels
        assert C % Fc == 0, f"mbstd: {C} channels not divisible by num_channels={Fc}"
        y = x.reshape(G, -1, Fc, C // Fc, H, W)  # [G, n, F, c, H, W]
        y = (y - y.mean(dim=0)).square().mean(dim=0)  # variance over the group
        y = (y + 1e-8).sqrt().mean(dim=[2, 3, 4])  # [n, F]
        y = y.reshape(-1, Fc, 1, 1).repeat(G, 1, H, W)  # [N, F, H, W]
        return torch.cat([x, y], dim=1)


class DiscriminatorEpilogue(nn.Module):
    """4×4 head: minibatch-stddev → 3×3 conv → fully connected → one logit per image."""

    def __init__(
        self,
        in_channels: int,  # channels at 4×4
        mbstd_group_size: int,  # see MinibatchStdLayer
        mbstd_channels: int,  # see MinibatchStdLayer
    ) -> None:
        super().__init__()
        self.in_channels = in_channels
        self.mbstd = MinibatchStdLayer(mbstd_group_size, mbstd_channels)
        self.conv = Conv2dLayer(in_channels + mbstd_channels, in_channels, kernel_size=3, activation="lrelu")
        self.fc = FullyConnectedLayer(in_channels * 4 * 4, in_channels, activation="lrelu")
        self.out = FullyConnectedLayer(in_channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        assert x.shape[1:] == (self.in_channels, 4, 4), f"x: expected [N, {self.in_channels}, 4, 4]"
        x = self.conv(self.mbstd(x))
        return self.out(self.fc(x.flatten(1)))


# ----------------------------------------------------------------------------------------------------------
# Networks.


class SynthesisNetwork(nn.Module):
    """ws → image, through blocks ``b4 … b{resolution}``; optionally returns every block's features."""

    def __init__(self, cfg: GanConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.block_resolutions = cfg.block_resolutions
        self.block_channels = [cfg.channels(res) for res in self.block_resolutions]
        self.num_ws = 0
        for res, out_ch in zip(self.block_resolutions, self.block_channels, strict=True):
            in_ch = 0 if res == 4 else cfg.channels(res // 2)
            block = SynthesisBlock(in_ch, out_ch, cfg.w_dim, res, cfg.img_channels)
            self.num_ws += block.num_conv
            setattr(self, f"b{res}", block)
        self.num_ws += 1  # the last block's ToRGB

    def forward(
        self,
        ws: torch.Tensor,  # [N, num_ws, w_dim]
        noise_mode: str = "const",  # 'random' | 'const' (fixed buffers, deterministic) | 'none'
        return_features: bool = False,  # also return each block's output feature map
    ) -> torch.Tensor | tuple[torch.Tensor, list[torch.Tensor]]:
        assert ws.ndim == 3 and ws.shape[1:] == (self.num_ws, self.cfg.w_dim), (
            f"ws: expected [N, {self.num_ws}, {self.cfg.w_dim}], received {tuple(ws.shape)}"
        )
        if noise_mode not in NOISE_MODES:
            raise ValueError(f"noise_mode: expected one of {NOISE_MODES}, received {noise_mode!r}")
        ws = ws.to(torch.float32)
        x = img = None
        feats: list[torch.Tensor] = []
        w_idx = 0
        for res in self.block_resolutions:
            block: SynthesisBlock = getattr(self, f"b{res}")
            block_ws = ws.narrow(1, w_idx, block.num_conv + block.num_torgb)
            w_idx += block.num_conv
            x, img = block(x, img, block_ws, noise_mode)
            feats.append(x)
        return (img, feats) if return_features else img


class Generator(nn.Module):
    """StyleGAN2 generator: ``mapping`` (z → ws) followed by ``synthesis`` (ws → image).

    Attributes:
        block_resolutions: resolution of each synthesis block, lowest first.
        block_channels: output channels of each synthesis block (matches ``block_resolutions``).
        num_ws: number of style vectors the synthesis network consumes.
    """

    def __init__(self, cfg: GanConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.synthesis = SynthesisNetwork(cfg)
        self.num_ws = self.synthesis.num_ws
        self.block_resolutions = list(self.synthesis.block_resolutions)
        self.block_channels = list(self.synthesis.block_channels)
        self.mapping = MappingNetwork(
            cfg.z_dim, cfg.w_dim, self.num_ws, cfg.mapping_layers, cfg.mapping_lr_multiplier, cfg.w_avg_beta
        )

    def forward(
        self,
        z: torch.Tensor,  # [N, z_dim] latents
        psi: float = 1.0,  # truncation ψ: 1 = off, 0 = the average image
        noise_mode: str = "const",  # 'random' | 'const' | 'none'
        return_features: bool = False,  # also return every block's feature map, lowest resolution first
    ) -> torch.Tensor | tuple[torch.Tensor, list[torch.Tensor]]:
        ws = self.mapping(z, psi=psi)
        return self.synthesis(ws, noise_mode=noise_mode, return_features=return_features)


class Discriminator(nn.Module):
    """Residual StyleGAN2 discriminator: blocks ``b{resolution} … b8`` then a 4×4 epilogue → logits [N, 1]."""

    def __init__(self, cfg: GanConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.block_resolutions = [2**i for i in range(int(math.log2(cfg.resolution)), 2, -1)]
        for res in self.block_resolutions:
            in_ch = 0 if res == cfg.resolution else cfg.channels(res)
            block = DiscriminatorBlock(in_ch, cfg.channels(res), cfg.channels(res // 2), cfg.img_channels)
            setattr(self, f"b{res}", block)
        self.b4 = DiscriminatorEpilogue(cfg.channels(4), cfg.mbstd_group_size, cfg.mbstd_channels)

    def forward(self, img: torch.Tensor) -> torch.Tensor:
        R, C = self.cfg.resolution, self.cfg.img_channels
        assert img.ndim == 4 and img.shape[1:] == (C, R, R), (
            f"img: expected [N, {C}, {R}, {R}], received {tuple(img.shape)}"
        )
        x = img.to(torch.float32)
        for res in self.block_resolutions:
            x = getattr(self, f"b{res}")(x)
        return self.b4(x)


# ----------------------------------------------------------------------------------------------------------
# Utilities.


def count_parameters(module: nn.Module) -> int:
    """Number of trainable scalars in ``module``."""
    return int(sum(p.numel() for p in module.parameters()))


def images_to_uint8(img: torch.Tensor) -> np.ndarray:
    """Generator output ``[N, C, H, W]`` in ~[-1, 1] → uint8 ``[N, H, W, C]`` (the tile-store layout)."""
    assert img.ndim == 4, f"img: expected [N, C, H, W], received {tuple(img.shape)}"
    x = (img.detach().to(torch.float32) * 127.5 + 128).clamp(0, 255).to(torch.uint8)
    return x.permute(0, 2, 3, 1).cpu().numpy()
