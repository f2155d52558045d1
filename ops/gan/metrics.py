"""GAN quality metrics: weight-free multi-scale sliced Wasserstein distance (SWD), and FID from local weights.

SWD follows ProGAN (``metrics/sliced_wasserstein.py`` in tkarras/progressive_growing_of_gans): build a
Laplacian pyramid of every image, sample 7×7 neighbourhoods at each level, normalise the descriptors per
level and colour channel, and compare the two sets with sliced Wasserstein distances over random unit
directions (averaged over repeats). Values are ×10³ as in ProGAN. It needs no network weights, so it works
offline; low values mean the patch statistics of the two sets agree at that scale.

One deliberate difference: ProGAN normalises each set by its *own* mean and std, which makes SWD blind to
global per-channel colour shifts — exactly the stain shifts that matter in histology. By default
(``normalize="reference"``) both sets are normalised with the statistics of the first (real) set;
``normalize="per_set"`` reproduces ProGAN.

FID needs the Inception-v3 network. It is only computed from a TorchScript file the user already has (NVlabs'
``inception-2015-12-05.pt``); nothing is ever downloaded.

Accepted image inputs (both functions, both classes):
    * ``numpy.ndarray`` uint8 ``[N, H, W, C]`` — the tile-store layout, values 0…255;
    * ``torch.Tensor`` float ``[N, C, H, W]`` in [-1, 1] — generator output (converted like NVlabs:
      ``x·127.5 + 128``, clamped, rounded down to uint8).
"""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import scipy.linalg
import torch
import torch.nn.functional as F

Images = np.ndarray | torch.Tensor
NORMALIZE_MODES = ("reference", "per_set")

# 5×5 binomial kernel of cv2.pyrDown / pyrUp, as in ProGAN.
_GAUSS_1D = torch.tensor([1.0, 4.0, 6.0, 4.0, 1.0], dtype=torch.float64) / 16


def to_uint8_nchw(images: Images) -> torch.Tensor:
    """Either accepted input layout → uint8 tensor ``[N, C, H, W]`` on the CPU.

    Raises:
        ValueError: wrong dtype or rank, naming what was expected and what was received.
    """
    if isinstance(images, np.ndarray):
        if images.dtype != np.uint8 or images.ndim != 4:
            raise ValueError(f"images: expected uint8 [N, H, W, C] numpy array, received {images.dtype} {images.shape}")
        return torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2)
    if isinstance(images, torch.Tensor):
        if not images.is_floating_point() or images.ndim != 4:
            raise ValueError(
                f"images: expected float [N, C, H, W] tensor in [-1, 1], received {images.dtype} {tuple(images.shape)}"
            )
        return (images.detach().to("cpu", torch.float32) * 127.5 + 128).clamp(0, 255).to(torch.uint8)
    raise ValueError(f"images: expected a uint8 numpy array or float tensor, received {type(images).__name__}")


# ----------------------------------------------------------------------------------------------------------
# Sliced Wasserstein distance.


@dataclass(frozen=True)
class SwdResult:
    """SWD (×10³) per Laplacian-pyramid level, keyed by the level's resolution in px, and their average."""

    per_level: dict[int, float]
    average: float

    def to_metadata(self, prefix: str = "swd") -> dict[str, float]:
        """Flat ``{"swd_64": …, "swd_32": …, "swd_avg": …}`` for asset metadata and MLflow."""
        return {**{f"{prefix}_{res}": v for res, v in self.per_level.items()}, f"{prefix}_avg": self.average}


def _gauss_conv(x: torch.Tensor, gain: float = 1.0) -> torch.Tensor:
    """5×5 binomial filter with mirror borders (= scipy.ndimage.convolve(mode='mirror'))."""
    C = x.shape[1]
    k = (_GAUSS_1D[:, None] * _GAUSS_1D[None, :] * gain).to(x.dtype)
    return F.conv2d(F.pad(x, [2, 2, 2, 2], mode="reflect"), k.expand(C, 1, 5, 5), groups=C)


def laplacian_pyramid(x: torch.Tensor, num_levels: int) -> list[torch.Tensor]:
    """``[N, C, H, W]`` float → ``num_levels`` band-pass images, finest first (the last is the low-pass)."""
    pyramid = [x]
    for _ in range(1, num_levels):
        down = _gauss_conv(pyramid[-1])[:, :, ::2, ::2]
        up = torch.zeros_like(pyramid[-1])
        up[:, :, ::2, ::2] = down
        pyramid[-1] = pyramid[-1] - _gauss_conv(up, gain=4.0)
        pyramid.append(down)
    return pyramid


def _descriptors(level: torch.Tensor, nhood_size: int, nhoods_per_image: int, rng: np.random.Generator) -> torch.Tensor:
    """Sample ``nhoods_per_image`` random ``nhood_size²`` patches per image → ``[N·nhoods, C, k, k]``."""
    N, C, H, W = level.shape
    h = nhood_size // 2
    if min(H, W) <= 2 * h:
        raise ValueError(f"pyramid level {H}×{W} px is too small for {nhood_size}×{nhood_size} neighbourhoods")
    img = torch.arange(N).repeat_interleave(nhoods_per_image)
    ys = torch.from_numpy(rng.integers(h, H - h, size=N * nhoods_per_image))
    xs = torch.from_numpy(rng.integers(h, W - h, size=N * nhoods_per_image))
    offsets = torch.arange(-h, h + 1)
    yy = (ys[:, None] + offsets[None, :])[:, :, None]  # [M, k, 1]
    xx = (xs[:, None] + offsets[None, :])[:, None, :]  # [M, 1, k]
    patches = level.permute(0, 2, 3, 1)[img[:, None, None], yy, xx]  # [M, k, k, C]
    return patches.permute(0, 3, 1, 2)


def _sliced_wasserstein(
    a: torch.Tensor, b: torch.Tensor, dir_repeats: int, dirs_per_repeat: int, rng: np.random.Generator
) -> float:
    """Mean |sorted projection difference| over random unit directions, averaged over repeats."""
    results = []
    for _ in range(dir_repeats):
        dirs = torch.from_numpy(rng.standard_normal((a.shape[1], dirs_per_repeat)).astype(np.float32))
        dirs = dirs / dirs.square().sum(dim=0, keepdim=True).sqrt()
        proj_a = torch.sort(a @ dirs, dim=0).values
        proj_b = torch.sort(b @ dirs, dim=0).values
        results.append(float((proj_a - proj_b).abs().mean()))
    return float(np.mean(results))


def sliced_wasserstein_distance(
    reference: Images,  # e.g. real tiles; see the module docstring for layouts
    other: Images,  # e.g. generated images; same count and size as `reference`
    nhood_size: int = 7,  # neighbourhood side, px
    nhoods_per_image: int = 128,  # neighbourhoods sampled per image and level
    dir_repeats: int = 4,  # independent sets of random directions (results averaged)
    dirs_per_repeat: int = 128,  # random directions per set
    min_resolution: int = 16,  # coarsest pyramid level, px (ProGAN: 16)
    normalize: str = "reference",  # 'reference' (colour shifts count) | 'per_set' (ProGAN)
    seed: int = 0,  # seeds patch positions (shared by both sets) and directions: same inputs + seed → same result
) -> SwdResult:
    """Multi-scale SWD between two equally sized image sets (ProGAN), ×10³.

    Returns:
        :class:`SwdResult` with one value per level (keys = level resolution, finest first) and the average.

    Raises:
        ValueError: mismatched or unsupported inputs, or an unknown ``normalize`` mode.

    Example:
        >>> swd = sliced_wasserstein_distance(real_uint8_nhwc, fake_uint8_nhwc, seed=0)
        >>> swd.per_level[64], swd.average
    """
    if normalize not in NORMALIZE_MODES:
        raise ValueError(f"normalize: expected one of {NORMALIZE_MODES}, received {normalize!r}")
    a, b = to_uint8_nchw(reference), to_uint8_nchw(other)
    if a.shape != b.shape:
        raise ValueError(
            f"SWD needs two sets of the same count and size, received {tuple(a.shape)} (NCHW) and {tuple(b.shape)}"
        )
    res = a.shape[2]
    if a.shape[3] != res or res < min_resolution:
        raise ValueError(f"SWD needs square images of at least {min_resolution} px, received {tuple(a.shape)}")
    resolutions = []
    while res >= min_resolution:
        resolutions.append(res)
        res //= 2
    # Both sets use the same patch positions (common random numbers): a set against itself gives exactly 0,
    # and differences between sets are not masked by position sampling noise.
    seed_pos, seed_dirs = np.random.SeedSequence(seed).spawn(2)
    rng_dirs = np.random.default_rng(seed_dirs)
    pyr_a = laplacian_pyramid(a.to(torch.float32), len(resolutions))
    pyr_b = laplacian_pyramid(b.to(torch.float32), len(resolutions))
    per_level: dict[int, float] = {}
    for res, level_a, level_b, level_seed in zip(
        resolutions, pyr_a, pyr_b, seed_pos.spawn(len(resolutions)), strict=True
    ):
        da = _descriptors(level_a, nhood_size, nhoods_per_image, np.random.default_rng(level_seed))
        db = _descriptors(level_b, nhood_size, nhoods_per_image, np.random.default_rng(level_seed))
        mean_a, std_a = da.mean(dim=(0, 2, 3), keepdim=True), da.std(dim=(0, 2, 3), keepdim=True)
        if normalize == "reference":
            mean_b, std_b = mean_a, std_a
        else:
            mean_b, std_b = db.mean(dim=(0, 2, 3), keepdim=True), db.std(dim=(0, 2, 3), keepdim=True)
        da = ((da - mean_a) / (std_a + 1e-8)).flatten(1)
        db = ((db - mean_b) / (std_b + 1e-8)).flatten(1)
        per_level[res] = 1e3 * _sliced_wasserstein(da, db, dir_repeats, dirs_per_repeat, rng_dirs)
    return SwdResult(per_level=per_level, average=float(np.mean(list(per_level.values()))))


def swd_against(reference: np.ndarray, images: np.ndarray, seed: int = 0) -> SwdResult:
    """SWD between real crops and generated images, both uint8 ``[N, R, R, 3]`` (equal counts)."""
    n = min(len(reference), len(images))
    return sliced_wasserstein_distance(reference[:n], images[:n], seed=seed)


# ----------------------------------------------------------------------------------------------------------
# FID from a user-supplied Inception network.


def frechet_distance(mu_a: np.ndarray, sigma_a: np.ndarray, mu_b: np.ndarray, sigma_b: np.ndarray) -> float:
    """Fréchet distance between two Gaussians: |μa−μb|² + Tr(Σa + Σb − 2(ΣaΣb)^½)."""
    covmean = scipy.linalg.sqrtm(sigma_a @ sigma_b)
    return float(np.square(mu_a - mu_b).sum() + np.trace(sigma_a + sigma_b - 2 * np.real(covmean)))


class FidScorer:
    """FID with NVlabs' TorchScript Inception-v3 (``inception-2015-12-05.pt``) loaded from a local file.

    The detector is called as ``detector(uint8 [N, 3, H, W], return_features=True)`` and returns 2048-d pool
    features; it resizes to 299 px itself. FID is only meaningful with thousands of images per set.
    """

    def __init__(
        self,
        weights_path: str | os.PathLike[str],  # local TorchScript Inception file; never downloaded
        device: str | torch.device = "cpu",  # where to run the detector
        batch_size: int = 32,  # images per detector call
    ) -> None:
        self.weights_path = Path(weights_path)
        if not self.weights_path.is_file():
            raise FileNotFoundError(
                f"FID needs the Inception-v3 TorchScript weights, but {self.weights_path} does not exist. "
                f"Copy NVlabs' inception-2015-12-05.pt there from a machine with internet access, or point "
                f"the FID weights path at your copy; SWD (sliced_wasserstein_distance) needs no weights."
            )
        self.device = torch.device(device)
        self.batch_size = batch_size
        try:
            with warnings.catch_warnings():  # NVlabs ships TorchScript; torch 2.13 flags jit.load as deprecated
                warnings.filterwarnings("ignore", message=".*torch.jit.load.*", category=DeprecationWarning)
                self.detector = torch.jit.load(str(self.weights_path), map_location=self.device).eval()
        except RuntimeError as err:
            raise ValueError(
                f"{self.weights_path} is not a loadable TorchScript Inception network ({err}); "
                f"expected NVlabs' inception-2015-12-05.pt"
            ) from err

    @torch.no_grad()
    def features(self, images: Images) -> np.ndarray:
        """Inception pool features ``[N, D]`` (float64) of an image set."""
        x = to_uint8_nchw(images)
        if x.shape[1] == 1:
            x = x.repeat(1, 3, 1, 1)
        chunks = [
            self.detector(batch.to(self.device), return_features=True).to("cpu", torch.float64)
            for batch in x.split(self.batch_size)
        ]
        return torch.cat(chunks).numpy()

    def statistics(self, images: Images) -> tuple[np.ndarray, np.ndarray]:
        """Mean and covariance of the Inception features (cache these for the real set)."""
        feats = self.features(images)
        if feats.shape[0] < 2:
            raise ValueError(f"FID needs at least 2 images per set, received {feats.shape[0]}")
        return feats.mean(axis=0), np.cov(feats, rowvar=False)

    def score(self, reference: Images, other: Images) -> float:
        """FID between two image sets (lower is better)."""
        return frechet_distance(*self.statistics(reference), *self.statistics(other))
