"""Tissue masks on low-resolution images."""

from __future__ import annotations

import numpy as np
import pytest
from skimage import data

from ops.slides.demo_slides import DemoSlideSpec, write_demo_slide
from ops.slides.reader import open_slide
from ops.slides.tissue import TissueMaskParams, read_lowres, saturation, tissue_mask


def _glass_with_tissue(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    img = np.clip(rng.normal(242, 2, size=(256, 256, 3)), 0, 255).astype(np.uint8)
    tissue = data.immunohistochemistry()[::4, ::4]  # 128 x 128 of real IHC
    img[64:192, 32:160] = tissue
    truth = np.zeros((256, 256), bool)
    truth[64:192, 32:160] = True
    return img, truth


def test_saturation_values():
    rgb = np.array([[[255, 255, 255], [255, 0, 0], [0, 0, 0], [200, 100, 100]]], np.uint8)
    np.testing.assert_allclose(saturation(rgb)[0], [0, 1, 0, 0.5])


def test_mask_finds_the_tissue():
    img, truth = _glass_with_tissue()
    mask, threshold = tissue_mask(img, mask_mpp=16.0, params=TissueMaskParams())
    stained = truth & (saturation(img) > 0.3)
    assert mask[stained].mean() > 0.95, "strongly stained pixels are tissue"
    assert not mask[~truth].any(), "glass is never tissue"
    assert 0.05 <= threshold <= 0.07 + 1e-6


def test_all_glass_finds_nothing():
    rng = np.random.default_rng(1)
    glass = np.clip(rng.normal(240, 3, size=(200, 200, 3)), 0, 255).astype(np.uint8)
    mask, threshold = tissue_mask(glass, mask_mpp=16.0, params=TissueMaskParams())
    assert not mask.any()
    assert threshold == pytest.approx(0.05)  # Otsu split noise; the floor won


def test_fixed_threshold_and_small_objects():
    img, _ = _glass_with_tissue()
    img[10:13, 10:13] = (150, 30, 30)  # a 3x3 px red speck: 2304 um^2 at 16 um/px, below the minimum area
    mask, threshold = tissue_mask(img, 16.0, TissueMaskParams(saturation_threshold=0.2))
    assert threshold == 0.2
    assert not mask[5:20, 5:20].any()


def test_read_lowres_uses_pyramid_level(slide_a):
    with open_slide(slide_a) as reader:
        rgb, ds = read_lowres(reader, 16)
    assert ds == 16 and rgb.shape == (192, 192, 3)


def test_read_lowres_single_level_reads_strips(tmp_path):
    flat = write_demo_slide(DemoSlideSpec("flat", 2048, 1024, seed=4, levels=1), tmp_path)
    with open_slide(flat) as reader:
        rgb, ds = read_lowres(reader, 32)
        full = reader.read_region(0, 0, 0, 2048, 1024)
    assert ds == 32 and rgb.shape == (32, 64, 3)
    expected = full.reshape(32, 32, 64, 32, 3).mean(axis=(1, 3))
    assert np.abs(rgb.astype(float) - expected).max() <= 0.5 + 1e-6
