"""Keeping the generated images whose colours match real crops: histograms and the greedy nearest-neighbour match."""

from __future__ import annotations

import numpy as np
import pytest

from ops.gan.appearance_match import colour_histograms, match_to_reference


def test_colour_histograms_put_each_pixels_colour_in_its_joint_bin() -> None:
    images = np.zeros((2, 4, 4, 3), np.uint8)
    images[0] = 255  # white: the last joint bin
    images[1, :2] = (255, 0, 0)  # half red, half black
    hist = colour_histograms(images)
    assert hist.shape == (2, 64) and np.allclose(hist.sum(1), 1.0)
    assert hist[0, 63] == 1.0
    assert hist[1, 0] == 0.5 and hist[1, 3 * 16] == 0.5  # black (0, 0, 0), red (3, 0, 0)
    with pytest.raises(ValueError, match="expected uint8"):
        colour_histograms(images.astype(np.float32))


def test_each_reference_takes_its_own_nearest_free_pool_image() -> None:
    rng = np.random.default_rng(0)
    reference = rng.dirichlet(np.ones(8), size=5)
    distractors = rng.dirichlet(np.ones(8) * 50, size=20)  # all near the centre
    pool = np.concatenate([distractors[:10], reference[::-1], distractors[10:]])
    chosen = match_to_reference(pool, reference, 5, seed=3)
    assert sorted(chosen.tolist()) == list(range(10, 15))  # every copy, none twice
    assert np.array_equal(chosen, match_to_reference(pool, reference, 5, seed=3))  # seeded
    more = match_to_reference(pool, reference, 12, seed=3)  # references visited again: still distinct images
    assert len(set(more.tolist())) == 12 and set(range(10, 15)) <= set(more.tolist())
    with pytest.raises(ValueError, match="requested from a pool of 25"):
        match_to_reference(pool, reference, 26, seed=0)
    with pytest.raises(ValueError, match="no reference crops"):
        match_to_reference(pool, reference[:0], 2, seed=0)
