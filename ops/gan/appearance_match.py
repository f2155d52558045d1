"""Choosing which generated images to keep so that their mix of appearances follows real tissue, without labels.

Why: the demo GAN's samples are short of some tissue (stand-in labels: 0.2 % background pixels at psi 0.7 vs 6.5 %
in held-out crops) and long on others (cellular stroma 16 % vs 8 %). Truncation makes it worse and untruncated
sampling costs label fidelity. Instead, over-generate a pool and keep, for each unlabelled crop of the training
slides (visited in a seeded random order), the not-yet-kept pool image whose colour histogram is nearest: a greedy
nearest-neighbour matching, so the kept images' colour distribution follows the crops'. Colour is where the stain
tells the classes apart (white background, brown DAB, blue nuclei), it needs no label, and the crops come from the
training slides only, so the held-out slide stays a fair judge (``bench/gan_psi.py``).
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from ops.gan.networks import Generator
from ops.gan.sampling import generate
from ops.slides.crops import training_crops

HIST_BINS = 4  # per RGB channel: 64 joint bins, coarse enough that 64 x 64 px fill them meaningfully
REFERENCE_CROPS = 2048  # training-slide crops matched to (the budget routes' ``unlabelled_crops`` default)


def colour_histograms(images: np.ndarray, bins: int = HIST_BINS) -> np.ndarray:
    """uint8 ``[N, R, R, 3]`` -> ``[N, bins**3]`` joint RGB histograms, each summing to 1."""
    if images.ndim != 4 or images.shape[-1] != 3 or images.dtype != np.uint8:
        raise ValueError(f"colour_histograms: expected uint8 [N, R, R, 3], received {images.dtype} {images.shape}")
    q = (images.astype(np.int64) * bins) // 256  # [N, R, R, 3] in [0, bins)
    flat = (q[..., 0] * bins + q[..., 1]) * bins + q[..., 2]
    flat = flat.reshape(len(images), -1)
    hist = np.zeros((len(images), bins**3), np.float64)
    np.add.at(hist, (np.repeat(np.arange(len(images)), flat.shape[1]), flat.ravel()), 1.0)
    return hist / flat.shape[1]


def match_to_reference(pool: np.ndarray, reference: np.ndarray, count: int, seed: int) -> np.ndarray:
    """Indices of ``count`` distinct ``pool`` images, one per reference image, each the nearest still free.

    Distances are Hellinger (Euclidean between square-rooted histograms). References are visited in a seeded
    random order, so no reference is always served first from the whole pool; when ``count`` exceeds the
    references they are visited again in a new order.

    Args:
        pool: ``[P, D]`` histograms of the generated candidates.
        reference: ``[Q, D]`` histograms of unlabelled real crops.
        count: How many to keep (``<= P``).
        seed: Order of the references.

    Returns:
        int64 ``[count]`` pool indices in the order they were chosen.
    """
    if count > len(pool):
        raise ValueError(f"match_to_reference: {count} images requested from a pool of {len(pool)}")
    if not len(reference):
        raise ValueError("match_to_reference: no reference crops to match")
    a, b = np.sqrt(pool), np.sqrt(reference)
    dist = ((b**2).sum(1)[:, None] + (a**2).sum(1)[None, :] - 2 * b @ a.T).clip(min=0)  # [Q, P]
    rng = np.random.default_rng(seed)
    order = np.concatenate([rng.permutation(len(reference)) for _ in range(-(-count // len(reference)))])[:count]
    free = np.ones(len(pool), bool)
    chosen = np.empty(count, np.int64)
    for i, r in enumerate(order):
        j = int(np.argmin(np.where(free, dist[r], np.inf)))
        chosen[i], free[j] = j, False
    return chosen


def reference_histograms(tiles: pd.DataFrame, resolution: int, count: int = REFERENCE_CROPS) -> np.ndarray:
    """Colour histograms of ``count`` seeded crops of the *training* slides' kept tiles (``training_crops``, the same
    crops the budget routes learn appearance from): what generated images are matched to."""
    return colour_histograms(training_crops(tiles, resolution, count))


def matched_seeds(
    G: Generator, candidates: np.ndarray, psi: float, reference: np.ndarray, count: int, seed: int
) -> np.ndarray:
    """The ``count`` candidate seeds whose images' colours match ``reference`` (ascending seeds).

    The candidates are generated in batches on the generator's device (throughput; the kept seeds are regenerated
    one by one downstream, so a batched rounding difference can only change which seed is chosen, never a kept
    image).
    """
    images = generate(G, candidates, psi, next(G.parameters()).device, batch=32)[2]
    return np.sort(candidates[match_to_reference(colour_histograms(images), reference, count, seed)])


def draw_seeds(
    G: Generator,
    candidates: np.ndarray,
    count: int,
    match_pool: int,
    psi: float,
    reference: np.ndarray | None,
    seed: int,
) -> np.ndarray:
    """The ``count`` seeds a draw synthesises from its ``candidates`` (``match_pool`` x ``count`` of them): the first
    ``count`` when ``match_pool`` is 0 (DatasetGAN), else those whose colours match ``reference`` (ascending).

    The one rule behind the export's batches, the equal-budget route's samples and the images drawn for annotation,
    so that the three draw alike.
    """
    if not match_pool:
        return candidates[:count]
    if reference is None:
        raise ValueError(
            "match_pool is set but no reference histograms were given to match; pass reference_histograms of the "
            "training tiles or set match_pool to 0"
        )
    return matched_seeds(G, candidates, psi, reference, count, seed)
