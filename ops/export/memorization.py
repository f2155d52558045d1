"""Privacy check: are synthetic tiles near-copies of the tiles the GAN was trained on?

A GAN trained on a few thousand patient tiles can memorise some of them, and a released "synthetic" data set would
then leak patient data. The check follows the usual nearest-neighbour audit: for every synthetic image find its
closest training tile, and call it a near-copy when it is closer than real tiles normally are to *each other*.

Two descriptor spaces, because each misses what the other catches:

* **pixels** — area-downsampled RGB (:func:`pixel_descriptors`): catches copies up to small noise and blur, but is
  fooled by flips or colour shifts;
* **discriminator features** — the trained discriminator's penultimate activations (:class:`DiscriminatorFeatures`),
  L2-normalised: the network that judged the training tiles, so it sees what the GAN "knows" about them.

The threshold in each space is a low quantile (default 1%) of bank-to-bank nearest-neighbour distances, self-matches
excluded (:func:`copy_threshold`): "as close as two different real tiles get". A synthetic image at most that far
from a training tile in either space is flagged (:func:`check_memorization`). With ``quantile = q`` about ``q`` of
genuinely new images per space are flagged by chance, so read the share of flagged images against ``q``, and look at
the flagged pairs. Known blind spot: a bland image near the bank's mean (a flat mid-colour tile, as a collapsed
generator makes) is closer to *every* tile than tiles are to each other, so it is flagged although it copies none —
a flagged image whose distance to its second-nearest tile is barely larger than to its nearest is such a case.

Layouts: images uint8 ``[N, R, R, 3]`` (the tile-store layout); descriptors float32 ``[N, D]``.

Example:
    >>> df = check_memorization(synthetic_tiles, training_tiles, checkpoint="data/gan/checkpoint.pt")
    >>> df["near_copy"].mean(), df.attrs["pixel_threshold"]
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F

from ops.common.device import pick_device
from ops.gan.networks import Discriminator, GanConfig, MinibatchStdLayer
from ops.gan.trainer import read_checkpoint

ArrayLike = np.ndarray | torch.Tensor

# ----------------------------------------------------------------------------------------------------------------
# Descriptors.


def _check_images(images: np.ndarray, name: str = "images") -> np.ndarray:
    images = np.asarray(images)
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[3] != 3:
        raise ValueError(f"{name}: expected uint8 [N, H, W, 3], received {images.dtype} {images.shape}")
    return images


def pixel_descriptors(images: np.ndarray, size: int = 32, batch_size: int = 256) -> np.ndarray:
    """Area-downsample to ``size × size`` and flatten, in [0, 1]: a pixel-space descriptor robust to fine noise.

    Downsampling first makes the distance insensitive to JPEG-like noise and tiny shifts, which a copy may carry,
    and keeps the bank small (32² × 3 = 3072 floats per tile). ``size`` larger than the image repeats pixels.

    Args:
        images: uint8 ``[N, H, W, 3]``.
        size: Output side, px.
        batch_size: Images converted to float at a time (bounds memory).

    Returns:
        float32 ``[N, size·size·3]``, channels-last order.
    """
    images = _check_images(images)
    if not (isinstance(size, int) and size >= 1):
        raise ValueError(f"pixel_descriptors: size must be a positive integer, received {size!r}")
    out = np.empty((len(images), size * size * 3), np.float32)
    for start in range(0, len(images), batch_size):
        x = torch.from_numpy(np.ascontiguousarray(images[start : start + batch_size])).permute(0, 3, 1, 2)
        x = F.adaptive_avg_pool2d(x.to(torch.float32) / 255.0, size)  # area average for integer ratios
        out[start : start + batch_size] = x.permute(0, 2, 3, 1).reshape(len(x), -1).numpy()
    return out


class DiscriminatorFeatures:
    """Penultimate activations of a trained histofactory discriminator, as L2-normalised descriptors.

    The features are the epilogue's fully connected layer output (before the final 1-logit layer), computed by
    running the loaded :class:`~ops.gan.networks.Discriminator`'s own blocks. The minibatch-stddev layer is run with
    group size 1 (its appended channel becomes a constant), so that an image's descriptor does not depend on which
    other images share its batch — nearest neighbours must not change with the batching.

    Attributes:
        cfg: The GAN architecture read from the checkpoint.
        dim: Descriptor length (channels at 4 px).
        resolution: Image side the discriminator expects, px.
    """

    def __init__(
        self,
        checkpoint_path: str | os.PathLike[str],  # GAN checkpoint written by GanTrainer.save_checkpoint
        device: str | torch.device = "cpu",  # 'auto' | 'cpu' | 'cuda[:i]'
    ) -> None:
        payload = read_checkpoint(checkpoint_path)
        self.cfg = GanConfig.from_dict(payload["gan_config"])
        self.device = device if isinstance(device, torch.device) else pick_device(device)
        self.D = Discriminator(self.cfg)
        self.D.load_state_dict(payload["D"])
        self.D.to(self.device).eval().requires_grad_(False)
        self.dim = self.D.b4.in_channels
        self.resolution = self.cfg.resolution
        self._mbstd = MinibatchStdLayer(group_size=1, num_channels=self.cfg.mbstd_channels)

    @torch.no_grad()
    def _forward(self, img: torch.Tensor) -> torch.Tensor:
        """float ``[n, 3, R, R]`` in [-1, 1] → ``[n, dim]``, mirroring ``Discriminator.forward`` up to ``b4.out``."""
        x = img
        for res in self.D.block_resolutions:
            x = getattr(self.D, f"b{res}")(x)
        epilogue = self.D.b4
        x = epilogue.conv(self._mbstd(x))
        return epilogue.fc(x.flatten(1))

    def __call__(self, images: np.ndarray, batch_size: int = 64) -> np.ndarray:
        """Descriptors for uint8 ``[N, R, R, 3]`` images → float32 ``[N, dim]`` of unit length.

        Raises:
            ValueError: images of another size than the discriminator's resolution, or not uint8 RGB.
        """
        images = _check_images(images)
        r = self.resolution
        if images.shape[1:3] != (r, r):
            raise ValueError(
                f"DiscriminatorFeatures: the checkpoint's discriminator takes {r}×{r} tiles, "
                f"received {images.shape[1]}×{images.shape[2]}; resize or use a matching checkpoint"
            )
        out = np.empty((len(images), self.dim), np.float32)
        for start in range(0, len(images), batch_size):
            x = torch.from_numpy(np.ascontiguousarray(images[start : start + batch_size])).to(self.device)
            x = x.permute(0, 3, 1, 2).to(torch.float32) / 127.5 - 1
            feats = F.normalize(self._forward(x), dim=1)
            out[start : start + batch_size] = feats.cpu().numpy()
        return out


# ----------------------------------------------------------------------------------------------------------------
# Nearest neighbours and thresholds.


def _as_matrix(a: ArrayLike, name: str) -> torch.Tensor:
    """``[N, D]`` CPU float tensor, kept in its own precision (blocks are promoted to float64 one at a time)."""
    t = a.detach().cpu() if isinstance(a, torch.Tensor) else torch.from_numpy(np.asarray(a))
    if t.ndim != 2:
        raise ValueError(f"{name}: expected a [N, D] array, received shape {tuple(t.shape)}")
    return t if t.is_floating_point() else t.to(torch.float32)


def _nearest(
    queries: torch.Tensor, bank: torch.Tensor, chunk: int, exclude: torch.Tensor | None
) -> tuple[np.ndarray, np.ndarray]:
    """Chunked exact L2 nearest neighbour; ``exclude[i]`` is a bank index query ``i`` may not match (or -1)."""
    n, m = len(queries), len(bank)
    best = torch.full((n,), float("inf"), dtype=torch.float64)
    best_idx = torch.full((n,), -1, dtype=torch.int64)
    for qs in range(0, n, chunk):
        q = queries[qs : qs + chunk].to(torch.float64)
        q_sq = q.square().sum(dim=1, keepdim=True)
        q_best, q_idx = best[qs : qs + chunk], best_idx[qs : qs + chunk]  # views: updated in place
        for bs in range(0, m, chunk):
            b = bank[bs : bs + chunk].to(torch.float64)
            # |q - b|² = |q|² + |b|² - 2 q·b, in float64 so that exact copies come out at ~0 rather than ~1e-3.
            d2 = (q_sq + b.square().sum(dim=1) - 2.0 * q @ b.T).clamp_min_(0.0)
            if exclude is not None:
                cols = torch.arange(bs, bs + d2.shape[1])
                d2.masked_fill_(cols[None, :] == exclude[qs : qs + chunk, None], float("inf"))
            d_min, d_arg = d2.min(dim=1)
            better = d_min < q_best  # strict: ties keep the lower bank index
            q_best[better] = d_min[better]
            q_idx[better] = d_arg[better] + bs
    # The expansion above leaves rounding residue (~1e-6 for an exact copy, BLAS-dependent); the winners' distances are
    # recomputed directly so that an exact copy reads 0 and the reported distance does not depend on the BLAS build.
    exact = torch.full((n,), float("inf"), dtype=torch.float64)
    for qs in range(0, n, chunk):
        idx = best_idx[qs : qs + chunk]
        found = torch.nonzero(idx >= 0).squeeze(1)
        diff = queries[qs + found].to(torch.float64) - bank[idx[found]].to(torch.float64)
        exact[qs + found] = diff.norm(dim=1)
    return exact.numpy(), best_idx.numpy()


def nearest_neighbour_distances(
    queries: ArrayLike, bank: ArrayLike, chunk: int = 1024
) -> tuple[np.ndarray, np.ndarray]:
    """Exact Euclidean nearest neighbour in ``bank`` of every query.

    Computed on ``chunk × chunk`` blocks of the distance matrix, so the working memory is a few ``8·chunk²``-byte
    blocks whatever the sizes — a bank of 100k tiles against 10k synthetic images fits on a laptop.

    Args:
        queries: ``[N, D]``.
        bank: ``[M, D]``, ``M >= 1``.
        chunk: Rows of queries and of the bank per block.

    Returns:
        ``(dist float64 [N], index int64 [N])``: distance to, and index of, the closest bank row (lowest index
        on ties).

    Raises:
        ValueError: not 2-D, different ``D``, an empty bank, or ``chunk < 1``.
    """
    q, b = _as_matrix(queries, "queries"), _as_matrix(bank, "bank")
    if q.shape[1] != b.shape[1]:
        raise ValueError(f"queries have {q.shape[1]} dimensions, bank {b.shape[1]}: expected the same")
    if len(b) == 0:
        raise ValueError("bank: expected at least one row, received an empty bank")
    if chunk < 1:
        raise ValueError(f"chunk: expected a positive integer, received {chunk!r}")
    return _nearest(q, b, chunk, exclude=None)


def copy_threshold(
    bank: ArrayLike, quantile: float = 0.01, sample: int = 2000, seed: int = 0, chunk: int = 1024
) -> float:
    """The ``quantile`` of bank-to-bank nearest-neighbour distances, each tile's own match excluded.

    That is "as close as two different real tiles get": a synthetic image closer than this to a training tile is
    closer than almost any pair of real tiles, hence suspicious. Exact duplicates inside the bank (e.g. overlapping
    tiles) count as distance 0 and pull the threshold down — deduplicate the bank first if that is unwanted. With a
    small bank the low quantile is the minimum of a few values, so the share of new images flagged by chance can be
    several times ``quantile`` (measured on random textures: up to 14% at 60 tiles for q = 0.01, ~1% at 600).

    Args:
        bank: ``[M, D]`` descriptors, ``M >= 2``.
        quantile: In (0, 1).
        sample: Bank rows used as queries (against the whole bank); all rows when ``M <= sample``.
        seed: Seeds the choice of the sampled rows.
        chunk: See :func:`nearest_neighbour_distances`.

    Returns:
        The distance threshold.

    Raises:
        ValueError: fewer than two bank rows, ``quantile`` outside (0, 1) or ``sample < 1``.
    """
    b = _as_matrix(bank, "bank")
    if len(b) < 2:
        raise ValueError(
            f"copy_threshold: needs at least 2 bank rows to measure real-to-real distances, received {len(b)}"
        )
    if not 0 < quantile < 1:
        raise ValueError(f"copy_threshold: quantile must be in (0, 1), received {quantile!r}")
    if sample < 1:
        raise ValueError(f"copy_threshold: sample must be >= 1, received {sample!r}")
    rows = np.arange(len(b))
    if len(b) > sample:
        rows = np.sort(np.random.default_rng(seed).choice(len(b), size=sample, replace=False))
    idx = torch.from_numpy(rows)
    dist, _ = _nearest(b[idx], b, chunk, exclude=idx)
    return float(np.quantile(dist, quantile))


# ----------------------------------------------------------------------------------------------------------------
# The check.


def check_memorization(
    synthetic: np.ndarray,  # uint8 [N, R, R, 3] generated tiles
    bank_images: np.ndarray,  # uint8 [M, R, R, 3] the GAN's training tiles
    checkpoint: str | os.PathLike[str] | None = None,  # GAN checkpoint for the feature space; None = pixels only
    quantile: float = 0.01,  # bank-to-bank NN-distance quantile used as the threshold in each space
    pixel_size: int = 32,  # side of the pixel descriptors, px
    sample: int = 2000,  # bank rows used to estimate each threshold
    seed: int = 0,  # seeds that sample
    device: str | torch.device = "cpu",  # where the discriminator runs
    chunk: int = 1024,  # block size of the distance computation
) -> pd.DataFrame:
    """Nearest training tile of every synthetic tile, in pixel and (optionally) discriminator space, and the verdict.

    Returns:
        One row per synthetic image: ``nn_pixel`` (distance), ``nn_pixel_index`` (bank row), ``nn_feature`` and
        ``nn_feature_index`` (NaN / -1 without a checkpoint), ``near_copy_pixel``, ``near_copy_feature`` and
        ``near_copy`` (either). ``df.attrs`` holds ``pixel_threshold``, ``feature_threshold`` (NaN without a
        checkpoint), ``quantile``, ``n_bank`` and ``n_synthetic``.

    Raises:
        ValueError: images that are not uint8 RGB, or synthetic and bank tiles of different sizes.
    """
    synthetic, bank_images = _check_images(synthetic, "synthetic"), _check_images(bank_images, "bank_images")
    if synthetic.shape[1:] != bank_images.shape[1:]:
        raise ValueError(
            f"synthetic tiles are {synthetic.shape[1:]}, bank tiles {bank_images.shape[1:]}: "
            f"expected the same size (compare tiles at the GAN's resolution)"
        )
    bank_px = pixel_descriptors(bank_images, pixel_size)
    nn_px, idx_px = nearest_neighbour_distances(pixel_descriptors(synthetic, pixel_size), bank_px, chunk)
    t_px = copy_threshold(bank_px, quantile, sample, seed, chunk)
    n = len(synthetic)
    nn_ft, idx_ft, t_ft = np.full(n, np.nan), np.full(n, -1, np.int64), float("nan")
    if checkpoint is not None:
        features = DiscriminatorFeatures(checkpoint, device)
        bank_ft = features(bank_images)
        nn_ft, idx_ft = nearest_neighbour_distances(features(synthetic), bank_ft, chunk)
        t_ft = copy_threshold(bank_ft, quantile, sample, seed, chunk)
    df = pd.DataFrame(
        {
            "nn_pixel": nn_px,
            "nn_pixel_index": idx_px,
            "nn_feature": nn_ft,
            "nn_feature_index": idx_ft,
            "near_copy_pixel": nn_px <= t_px,  # "at most as far as": an exact copy is flagged even if t = 0
            "near_copy_feature": nn_ft <= t_ft,  # NaN compares False: no checkpoint, no flag
        }
    )
    df["near_copy"] = df["near_copy_pixel"] | df["near_copy_feature"]
    df.attrs.update(
        {
            "pixel_threshold": t_px,
            "feature_threshold": t_ft,
            "quantile": float(quantile),
            "n_bank": len(bank_images),
            "n_synthetic": n,
        }
    )
    return df


def memorization_summary(df: pd.DataFrame) -> dict[str, Any]:
    """Counts and thresholds from :func:`check_memorization`, for asset metadata and checks."""
    n = len(df)
    return {
        "n_synthetic": n,
        "n_near_copies": int(df["near_copy"].sum()),
        "near_copy_share": float(df["near_copy"].mean()) if n else float("nan"),
        "n_near_copies_pixel": int(df["near_copy_pixel"].sum()),
        "n_near_copies_feature": int(df["near_copy_feature"].sum()),
        "min_nn_pixel": float(df["nn_pixel"].min()) if n else float("nan"),
        **{k: df.attrs[k] for k in ("pixel_threshold", "feature_threshold", "quantile", "n_bank") if k in df.attrs},
    }
