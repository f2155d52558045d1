"""Rasterisation: a pixel belongs to a polygon when its centre is inside (holes excluded), clipped to the image."""

from __future__ import annotations

import numpy as np
import pytest
import shapely

from ops.labelling.rasterize import paint_polygons


def _ring(rng: np.random.Generator, cx: float, cy: float, radius: float, n: int) -> np.ndarray:
    angle = np.sort(rng.uniform(0, 2 * np.pi, n))
    r = radius * rng.uniform(0.6, 1.0, n)
    return np.column_stack([cx + r * np.cos(angle), cy + r * np.sin(angle)])


def test_pixel_centres_inside_random_polygons_with_holes() -> None:
    rng = np.random.default_rng(0)
    ys, xs = np.mgrid[0:30, 0:36]
    for _ in range(20):
        outer = _ring(rng, 20, 15, 14, int(rng.integers(5, 40)))  # float vertices: no centre lies on an edge
        hole = _ring(rng, 20, 15, 3, 6)
        mask = paint_polygons(np.zeros((30, 36), np.uint8), [([outer, hole], 3)])
        want = shapely.contains_xy(shapely.Polygon(outer, [hole]), xs + 0.5, ys + 0.5)
        np.testing.assert_array_equal(mask == 3, want)


def test_fractional_box_order_and_clipping() -> None:
    box = np.array([[0.4, 0.4], [2.6, 0.4], [2.6, 1.6], [0.4, 1.6]])  # covers centres of columns 0-2, rows 0-1
    mask = paint_polygons(np.full((5, 5), 9, np.uint8), [([box], 1), ([box + [1.0, 0.0]], 2), ([box + 3.0], 4)])
    expected = np.full((5, 5), 9, np.uint8)
    expected[:2, :3] = 1
    expected[:2, 1:4] = 2  # painted later: wins where the two overlap
    expected[3:, 3:] = 4  # the part beyond the image is cut off
    np.testing.assert_array_equal(mask, expected)
    assert (paint_polygons(mask.copy(), []) == mask).all()
    with pytest.raises(ValueError, match=r"mask must be uint8 \[H, W\]"):
        paint_polygons(np.zeros((2, 5, 5), np.uint8), [([box], 1)])
