"""Demo slides are real pyramidal JPEG TIFFs that openslide opens, and no tile repeats across slides."""

from __future__ import annotations

import numpy as np
import openslide
import tifffile

from ops.slides.demo_slides import DEMO_SLIDES, DemoSlideSpec, write_demo_slide


def test_openslide_reads_pyramid_and_mpp(slide_a):
    slide = openslide.OpenSlide(slide_a)
    assert slide.properties["openslide.vendor"] == "aperio"
    assert float(slide.properties["openslide.mpp-x"]) == 0.5
    assert slide.level_count == 3
    assert slide.level_dimensions[0] == (3072, 3072)
    assert [round(d) for d in slide.level_downsamples] == [1, 4, 16]
    with tifffile.TiffFile(slide_a) as tif:
        page = tif.pages[0]
        assert page.is_tiled and page.compression == tifffile.COMPRESSION.JPEG
        assert (page.tilelength, page.tilewidth) == (256, 256)


def test_slide_has_tissue_and_glass(slide_a):
    slide = openslide.OpenSlide(slide_a)
    low = np.asarray(slide.read_region((0, 0), 2, slide.level_dimensions[2]).convert("RGB")).astype(int)
    glass = (low.min(-1) > 215) & (low.max(-1) - low.min(-1) < 20)
    assert 0.4 < glass.mean() < 0.85, "demo slides are mostly glass with tissue islands"


def test_same_spec_gives_same_bytes(tmp_path):
    spec = DemoSlideSpec("tiny", 1024, 1024, seed=5, levels=2)
    a = write_demo_slide(spec, tmp_path / "a").read_bytes()
    b = write_demo_slide(spec, tmp_path / "b").read_bytes()
    assert a == b


def _tissue_tiles(path, size=256):
    """Grey, normalised, 4x-downsampled tissue tiles of a slide (the unit a split must not share)."""
    slide = openslide.OpenSlide(path)
    w, h = slide.dimensions
    out = []
    for y in range(0, h - size + 1, size):
        for x in range(0, w - size + 1, size):
            tile = np.asarray(slide.read_region((x, y), 0, (size, size)).convert("L"), np.float32)
            if (tile < 200).mean() > 0.6:
                small = tile.reshape(size // 4, 4, size // 4, 4).mean((1, 3))
                out.append(((small - small.mean()) / (small.std() + 1e-6)).ravel())
    return np.array(out)


def test_no_tile_repeats_across_slides(slide_a, slide_b):
    a, b = _tissue_tiles(slide_a), _tissue_tiles(slide_b)
    assert len(a) > 10 and len(b) > 10
    corr = a @ b.T / a.shape[1]  # Pearson correlation of every tile pair across the two slides
    # Identical or near-identical tiles would correlate ~1; distinct tissue of the same stain stays far below.
    assert corr.max() < 0.8, f"max cross-slide tile correlation {corr.max():.3f}"
    # ... and the check has teeth: a tile against itself, slightly noised, is found.
    noisy = a[0] + np.random.default_rng(0).normal(0, 0.1, a.shape[1])
    assert (a @ noisy / a.shape[1]).max() > 0.95


def test_demo_set_sizes_span_4k_to_16k():
    sizes = [max(s.width, s.height) for s in DEMO_SLIDES]
    assert min(sizes) == 4096 and max(sizes) == 16384
    assert len({s.seed for s in DEMO_SLIDES}) == len(DEMO_SLIDES)


def test_variants_for_error_paths(tmp_path):
    flat = write_demo_slide(DemoSlideSpec("flat", 1024, 1024, seed=1, levels=1), tmp_path)
    assert openslide.OpenSlide(flat).level_count == 1
    nompp = write_demo_slide(DemoSlideSpec("nompp", 1024, 1024, seed=1, mpp=None, levels=2), tmp_path)
    assert "openslide.mpp-x" not in openslide.OpenSlide(nompp).properties
