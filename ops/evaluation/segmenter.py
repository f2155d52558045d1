"""The segmenter of the downstream test: a small 2D U-Net (hand-written, or MONAI's BasicUNet), trained and scored.

The factory's claim is that synthetic, automatically labelled tiles are worth training on. The downstream test is the
one DatasetGAN and HDGAN report: train the same segmenter on different training sets and score each on the same
held-out real test set. This module holds the network and its train / predict / evaluate steps (no torchvision):

* :class:`UNet` — conv-BN-ReLU ×2 per level, max-pool down, bilinear or transposed-conv up, skip concatenation;
* :func:`train_segmenter` / :func:`predict_segmenter` / :func:`evaluate_segmenter` — arrays in, model or masks or
  metrics (via ``ops.evaluation.metrics``) out;
* :class:`MonaiUNet` — MONAI's ``BasicUNet`` behind the same config and layout (``arch="monai"``), which the
  learning curve (``ops.evaluation.learning_curve``) trains; the arms-by-budgets comparison lives there.

Sections, bottom-up: config → layers → network → save/load → augmentation → training → evaluation.

Layouts: images are uint8 ``[N, H, W, C]`` (the tile-store layout) and masks uint8 ``[N, H, W]`` class ids, with
``ignore_index`` (255) for unannotated pixels; the network works on float ``[N, C, H, W]`` in [-1, 1].

Example:
    >>> cfg = UNetConfig(n_classes=3)
    >>> model = train_segmenter(train_images, train_masks, cfg, epochs=20, seed=0)
    >>> evaluate_segmenter(model, test_images, test_masks, n_classes=3)["mean_dice"]
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ops.common.config_dict import DictConfig
from ops.common.device import pick_device
from ops.evaluation.metrics import IGNORE_INDEX, confusion_matrix, segmentation_report

UP_MODES = ("bilinear", "transpose")
NORMS = ("batch", "group")
ARCHS = ("handwritten", "monai")
MONAI_DEPTH = 4  # BasicUNet's fixed number of 2× down-samplings
CHECKPOINT_FORMAT = "histofactory.unet/1"

EpochCallback = Callable[[int, float], None]  # (epoch index from 0, mean training loss of that epoch)

# ----------------------------------------------------------------------------------------------------------------
# Configuration.


@dataclass(frozen=True)
class UNetConfig(DictConfig):
    """Architecture of one U-Net. Level ``i`` works at ``1 / 2**i`` of the input size with ``base·2**i`` channels."""

    n_classes: int  # K output classes (logit channels)
    in_channels: int = 3  # image channels (3 = RGB)
    base_channels: int = 16  # channels at full resolution; doubled at each level down
    depth: int = 3  # number of 2× down-samplings; input H and W must be divisible by 2**depth
    up_mode: str = "bilinear"  # 'bilinear' (parameter-free, no checkerboard) | 'transpose' (learned 2×2 stride 2)
    norm: str = "batch"  # 'batch' | 'group' (GroupNorm: per-image statistics, which other images cannot set)
    arch: str = "handwritten"  # 'handwritten' (this module's UNet) | 'monai' (MONAI's BasicUNet, depth 4)

    def __post_init__(self) -> None:
        for name in ("n_classes", "in_channels", "base_channels"):
            value = getattr(self, name)
            if not (isinstance(value, int) and value >= 1):
                raise ValueError(f"UNetConfig.{name}: expected a positive integer, received {value!r}")
        if self.n_classes < 2:
            raise ValueError(f"UNetConfig.n_classes: expected >= 2 classes, received {self.n_classes!r}")
        if not (isinstance(self.depth, int) and self.depth >= 0):
            raise ValueError(f"UNetConfig.depth: expected an integer >= 0, received {self.depth!r}")
        if self.up_mode not in UP_MODES:
            raise ValueError(f"UNetConfig.up_mode: expected one of {UP_MODES}, received {self.up_mode!r}")
        if self.norm not in NORMS:
            raise ValueError(f"UNetConfig.norm: expected one of {NORMS}, received {self.norm!r}")
        if self.arch not in ARCHS:
            raise ValueError(f"UNetConfig.arch: expected one of {ARCHS}, received {self.arch!r}")
        if self.arch == "monai" and self.depth != MONAI_DEPTH:
            raise ValueError(
                f"UNetConfig.depth: MONAI's BasicUNet always down-samples {MONAI_DEPTH} times; set depth="
                f"{MONAI_DEPTH} with arch='monai', received {self.depth!r}"
            )

    def channels(self, level: int) -> int:
        """Feature channels at ``level`` (0 = full resolution)."""
        return self.base_channels * 2**level


# ----------------------------------------------------------------------------------------------------------------
# Layers.


def norm_layer(norm: str, channels: int) -> nn.Module:
    """BatchNorm, or GroupNorm with up to 8 groups (as many as divide ``channels``)."""
    if norm == "group":
        return nn.GroupNorm(math.gcd(8, channels), channels)
    return nn.BatchNorm2d(channels)


class DoubleConv(nn.Sequential):
    """(3×3 conv → norm → ReLU) × 2; the conv has no bias because the norm's shift replaces it."""

    def __init__(
        self,
        in_channels: int,  # input channels
        out_channels: int,  # output channels (both convs)
        norm: str = "batch",  # see UNetConfig.norm
    ) -> None:
        super().__init__(
            nn.Conv2d(in_channels, out_channels, kernel_size=3, padding=1, bias=False),
            norm_layer(norm, out_channels),
            nn.ReLU(inplace=True),
            nn.Conv2d(out_channels, out_channels, kernel_size=3, padding=1, bias=False),
            norm_layer(norm, out_channels),
            nn.ReLU(inplace=True),
        )


class UpBlock(nn.Module):
    """2× up-sampling of the coarser features, concatenation with the skip, then :class:`DoubleConv`."""

    def __init__(
        self,
        in_channels: int,  # channels of the coarser input (level i+1)
        skip_channels: int,  # channels of the skip connection (level i)
        out_channels: int,  # output channels (level i)
        up_mode: str,  # see UNetConfig.up_mode
        norm: str = "batch",  # see UNetConfig.norm
    ) -> None:
        super().__init__()
        if up_mode == "transpose":
            self.up: nn.Module = nn.ConvTranspose2d(in_channels, out_channels, kernel_size=2, stride=2)
            up_channels = out_channels
        else:
            self.up = nn.Upsample(scale_factor=2, mode="bilinear", align_corners=False)
            up_channels = in_channels
        self.conv = DoubleConv(up_channels + skip_channels, out_channels, norm)

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        x = self.up(x)  # [N, C_in or C_out, 2h, 2w]
        return self.conv(torch.cat([x, skip], dim=1))


# ----------------------------------------------------------------------------------------------------------------
# Network.


class UNet(nn.Module):
    """``[N, in_channels, H, W]`` in [-1, 1] → ``[N, n_classes, H, W]`` logits.

    Encoder ``enc0 … enc{depth}`` (``enc{depth}`` is the bottleneck), decoder ``dec{depth-1} … dec0``, 1×1 head.
    ``depth=0`` is a plain two-conv network (useful as a no-context baseline).
    """

    def __init__(self, cfg: UNetConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.pool = nn.MaxPool2d(2)
        self.enc = nn.ModuleList(
            DoubleConv(cfg.in_channels if i == 0 else cfg.channels(i - 1), cfg.channels(i), cfg.norm)
            for i in range(cfg.depth + 1)
        )
        # dec[i] brings level i+1 up to level i.
        self.dec = nn.ModuleList(
            UpBlock(cfg.channels(i + 1), cfg.channels(i), cfg.channels(i), cfg.up_mode, cfg.norm)
            for i in range(cfg.depth)
        )
        self.head = nn.Conv2d(cfg.channels(0), cfg.n_classes, kernel_size=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        c, f = self.cfg.in_channels, 2**self.cfg.depth
        assert x.ndim == 4 and x.shape[1] == c, f"x: expected [N, {c}, H, W], received {tuple(x.shape)}"
        assert x.shape[2] % f == 0 and x.shape[3] % f == 0, (
            f"x: H and W must be divisible by 2**depth = {f}, received {tuple(x.shape[2:])}"
        )
        skips: list[torch.Tensor] = []
        for i, block in enumerate(self.enc):
            x = block(x if i == 0 else self.pool(x))  # [N, base·2^i, H/2^i, W/2^i]
            skips.append(x)
        x = skips.pop()  # bottleneck
        for i in reversed(range(self.cfg.depth)):
            x = self.dec[i](x, skips.pop())
        return self.head(x)


class MonaiUNet(nn.Module):
    """MONAI's ``BasicUNet`` (features ``b, b, 2b, 4b, 8b, b``) behind this module's config and input layout."""

    def __init__(self, cfg: UNetConfig) -> None:
        super().__init__()
        from monai.networks.nets import BasicUNet

        self.cfg, b = cfg, cfg.base_channels
        norm = ("group", {"num_groups": math.gcd(8, b)}) if cfg.norm == "group" else ("batch", {})
        self.net = BasicUNet(
            spatial_dims=2,
            in_channels=cfg.in_channels,
            out_channels=cfg.n_classes,
            features=(b, b, 2 * b, 4 * b, 8 * b, b),
            norm=norm,
            upsample="deconv" if cfg.up_mode == "transpose" else "nontrainable",
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        c, f = self.cfg.in_channels, 2**self.cfg.depth
        assert x.ndim == 4 and x.shape[1] == c, f"x: expected [N, {c}, H, W], received {tuple(x.shape)}"
        assert x.shape[2] % f == 0 and x.shape[3] % f == 0, (
            f"x: H and W must be divisible by 2**depth = {f}, received {tuple(x.shape[2:])}"
        )
        return self.net(x)


Segmenter = UNet | MonaiUNet


def build_network(cfg: UNetConfig) -> Segmenter:
    """The network ``cfg.arch`` names."""
    return MonaiUNet(cfg) if cfg.arch == "monai" else UNet(cfg)


def build_segmenter(
    n_classes: int, base_channels: int = 16, norm: str = "group", arch: str = "handwritten", in_channels: int = 3
) -> Segmenter:
    """The learning curve's segmenter (64-px crops reach a 4-px bottleneck with MONAI, 8 px hand-written)."""
    depth = MONAI_DEPTH if arch == "monai" else 3
    return build_network(UNetConfig(n_classes, in_channels, base_channels, depth=depth, norm=norm, arch=arch))


# ----------------------------------------------------------------------------------------------------------------
# Save / load (config + state dict, never a pickled module).


def save_segmenter(model: UNet, path: str | os.PathLike[str]) -> Path:
    """Write the config and weights to one ``torch.save`` file, readable with ``weights_only=True``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    torch.save({"format": CHECKPOINT_FORMAT, "config": model.cfg.to_dict(), "state_dict": state}, path)
    return path


def load_segmenter(path: str | os.PathLike[str], device: str | torch.device = "cpu") -> UNet:
    """Rebuild a :class:`UNet` written by :func:`save_segmenter`, in eval mode.

    Raises:
        ValueError: the file is not a histofactory U-Net checkpoint.
    """
    payload = torch.load(Path(path), map_location="cpu", weights_only=True)
    if not isinstance(payload, dict) or payload.get("format") != CHECKPOINT_FORMAT:
        found = payload.get("format") if isinstance(payload, dict) else type(payload).__name__
        raise ValueError(f"U-Net checkpoint {path}: expected format {CHECKPOINT_FORMAT!r}, found {found!r}")
    model = build_network(UNetConfig.from_dict(payload["config"]))
    model.load_state_dict(payload["state_dict"])
    return model.to(_device(device)).eval()


# ----------------------------------------------------------------------------------------------------------------
# Input checks and augmentation.


def _device(device: str | torch.device) -> torch.device:
    return device if isinstance(device, torch.device) else pick_device(device)


def _check_images(images: np.ndarray, cfg: UNetConfig, name: str = "images") -> np.ndarray:
    images = np.asarray(images)
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[3] != cfg.in_channels:
        raise ValueError(f"{name}: expected uint8 [N, H, W, {cfg.in_channels}], received {images.dtype} {images.shape}")
    f = 2**cfg.depth
    if images.shape[1] % f or images.shape[2] % f:
        raise ValueError(
            f"{name}: H and W must be divisible by 2**depth = {f} (UNetConfig.depth={cfg.depth}), "
            f"received {images.shape[1:3]}; crop or pad the tiles, or lower depth"
        )
    return images


def _check_masks(masks: np.ndarray, images: np.ndarray, n_classes: int, ignore_index: int) -> np.ndarray:
    masks = np.asarray(masks)
    if masks.shape != images.shape[:3]:
        raise ValueError(f"masks: expected shape {images.shape[:3]} (one per image), received {masks.shape}")
    labels = masks[masks != ignore_index]
    if labels.size and (labels.min() < 0 or labels.max() >= n_classes):
        raise ValueError(
            f"masks: class ids must be in 0..{n_classes - 1} or ignore_index={ignore_index}, "
            f"found {labels.min()}..{labels.max()}"
        )
    return masks


def _to_input(images: np.ndarray, device: torch.device) -> torch.Tensor:
    """uint8 ``[N, H, W, C]`` → float ``[N, C, H, W]`` in [-1, 1] (the scaling the GAN uses too)."""
    x = torch.from_numpy(np.ascontiguousarray(images)).to(device)
    return x.permute(0, 3, 1, 2).to(torch.float32) / 127.5 - 1


def random_dihedral(x: torch.Tensor, y: torch.Tensor, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Apply one random flip/90°-rotation per sample, identically to images and masks.

    Tissue has no preferred orientation, so the 8 symmetries of the square are free extra data. Vectorised: each
    rotation is computed for the whole batch once and selected per sample with ``torch.where``. Non-square tiles
    get flips and 180° turns only (a 90° turn would change their shape).

    Args:
        x: float ``[N, C, H, W]`` images.
        y: integer ``[N, H, W]`` masks.
        generator: CPU generator the draws come from (keeps training reproducible).

    Returns:
        The transformed ``(x, y)``.
    """
    n, square = x.shape[0], x.shape[2] == x.shape[3]
    flip = torch.rand(n, generator=generator) < 0.5
    turns = torch.randint(0, 4, (n,), generator=generator)
    if not square:
        turns = turns // 2 * 2  # 0 or 180°, which keeps the shape
    flip_x, flip_y = flip.to(x.device).view(n, 1, 1, 1), flip.to(x.device).view(n, 1, 1)
    x, y = torch.where(flip_x, x.flip(-1), x), torch.where(flip_y, y.flip(-1), y)
    for k in range(1, 4):
        sel = (turns == k).to(x.device)
        if sel.any():
            x = torch.where(sel.view(n, 1, 1, 1), x.rot90(k, dims=(2, 3)), x)
            y = torch.where(sel.view(n, 1, 1), y.rot90(k, dims=(1, 2)), y)
    return x, y


# ----------------------------------------------------------------------------------------------------------------
# Training.


def train_segmenter(
    images: np.ndarray,  # uint8 [N, H, W, C] training tiles
    masks: np.ndarray,  # uint8 [N, H, W] class ids; ignore_index = unannotated
    cfg: UNetConfig,  # architecture
    epochs: int,  # passes over the training set
    batch_size: int = 16,  # tiles per optimiser step
    lr: float = 1e-3,  # Adam learning rate
    seed: int = 0,  # seeds initialisation, shuffling and augmentation
    device: str | torch.device = "cpu",  # 'auto' | 'cpu' | 'cuda[:i]'
    ignore_index: int = IGNORE_INDEX,  # mask value left out of the loss
    augment: bool = True,  # random flips / 90° rotations per sample
    callback: EpochCallback | None = None,  # called as callback(epoch, mean_loss) after each epoch
) -> UNet:
    """Train a fresh :class:`UNet` with pixel-wise cross-entropy and Adam.

    Every random draw (weights, shuffling, augmentation) comes from ``seed`` and the caller's global RNG is left
    untouched, so on the CPU two calls with the same inputs and seed give identical weights — which is what lets
    :func:`compare_training_sets` attribute differences to the training data rather than to chance.

    Note:
        The number of optimiser steps is ``epochs · ceil(N / batch_size)``, so training sets of different sizes
        get different step counts for the same ``epochs``.

    Returns:
        The trained model, in eval mode, on ``device``.

    Raises:
        ValueError: bad shapes, dtypes or class ids, or a non-positive ``epochs``/``batch_size``/``lr``.
    """
    images = _check_images(images, cfg)
    masks = _check_masks(masks, images, cfg.n_classes, ignore_index)
    for name, value in (("epochs", epochs), ("batch_size", batch_size)):
        if not (isinstance(value, int) and value >= 1):
            raise ValueError(f"train_segmenter: {name} must be a positive integer, received {value!r}")
    if not lr > 0:
        raise ValueError(f"train_segmenter: lr must be > 0, received {lr!r}")
    if len(images) == 0:
        raise ValueError("train_segmenter: received an empty training set")
    dev = _device(device)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = build_network(cfg).to(dev)
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    x_all = torch.from_numpy(np.ascontiguousarray(images))  # uint8, converted per batch to bound memory
    y_all = torch.from_numpy(np.ascontiguousarray(masks)).to(torch.int64)
    model.train()
    for epoch in range(epochs):
        total, seen = 0.0, 0
        for idx in torch.randperm(len(x_all), generator=gen).split(batch_size):
            loss = _train_step(model, opt, x_all[idx], y_all[idx], gen, augment, ignore_index)
            total, seen = total + loss * len(idx), seen + len(idx)
        if callback is not None:
            callback(epoch, total / seen)
    return model.eval()


def _train_step(
    model: UNet,
    opt: torch.optim.Optimizer,
    x: torch.Tensor,
    y: torch.Tensor,
    gen: torch.Generator,
    augment: bool,
    ignore_index: int,
) -> float:
    """One Adam step on a uint8 ``[n, H, W, C]`` / int64 ``[n, H, W]`` batch; returns the loss."""
    dev = next(model.parameters()).device
    x = x.to(dev).permute(0, 3, 1, 2).to(torch.float32) / 127.5 - 1
    y = y.to(dev)
    if augment:
        x, y = random_dihedral(x, y, gen)
    if (y == ignore_index).all():
        return 0.0  # nothing annotated: cross-entropy would be NaN
    loss = F.cross_entropy(model(x), y, ignore_index=ignore_index)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    return float(loss.detach())


# ----------------------------------------------------------------------------------------------------------------
# Prediction and evaluation.


@torch.no_grad()
def predict_segmenter(
    model: UNet, images: np.ndarray, batch_size: int = 32, device: str | torch.device = "cpu"
) -> np.ndarray:
    """Arg-max class per pixel, uint8 ``[N, H, W]``, for uint8 ``[N, H, W, C]`` images (in eval mode).

    ``model`` is moved to ``device``. Batches bound the memory; BatchNorm in eval mode makes each image's
    prediction independent of its batch-mates.
    """
    images = _check_images(images, model.cfg)
    dev = _device(device)
    model.to(dev).eval()
    out = np.empty(images.shape[:3], np.uint8)
    for start in range(0, len(images), batch_size):
        logits = model(_to_input(images[start : start + batch_size], dev))
        out[start : start + batch_size] = logits.argmax(dim=1).to(torch.uint8).cpu().numpy()
    return out


def evaluate_segmenter(
    model: UNet,
    images: np.ndarray,  # uint8 [N, H, W, C] test tiles
    masks: np.ndarray,  # uint8 [N, H, W] true class ids
    n_classes: int,  # K
    class_names: Sequence[str] | None = None,  # names for the per-class keys; None = "0", "1", …
    ignore_index: int = IGNORE_INDEX,  # truth value not scored
    batch_size: int = 32,  # tiles per forward pass
    device: str | torch.device = "cpu",
) -> dict[str, float]:
    """Score a model on labelled tiles, as HDGAN reports it (see ``ops.evaluation.metrics``).

    Returns:
        Flat dict: ``mean_dice``, ``pixel_accuracy``, ``mean_class_accuracy``, ``dice/<class>`` and
        ``accuracy/<class>`` (NaN for a class absent from truth and prediction).
    """
    images = _check_images(images, model.cfg)
    masks = _check_masks(masks, images, n_classes, ignore_index)
    names = [str(c) for c in range(n_classes)] if class_names is None else list(class_names)
    pred = predict_segmenter(model, images, batch_size=batch_size, device=device)
    cm = confusion_matrix(masks, pred, n_classes, ignore_index=ignore_index)
    return segmentation_report(cm, names)
