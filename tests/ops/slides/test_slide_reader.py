"""One read API over openslide and tifffile, with clear errors for bad files."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import tifffile
from skimage import data

from ops.slides.demo_slides import DemoSlideSpec, write_demo_slide
from ops.slides.reader import SlideError, open_slide


def test_decoders_agree(slide_a):
    with open_slide(slide_a, decoder="openslide") as a, open_slide(slide_a, decoder="tifffile") as b:
        assert a.decoder == "openslide" and b.decoder == "tifffile"
        assert a.info.level_dimensions == b.info.level_dimensions
        for level, (x, y) in [(0, (1000, 700)), (1, (512, 256))]:
            ra, rb = a.read_region(x, y, level, 300, 200), b.read_region(x, y, level, 300, 200)
            assert ra.shape == rb.shape == (200, 300, 3)
            assert np.abs(ra.astype(int) - rb.astype(int)).max() <= 2


def test_auto_decodes_tiff_directly(slide_a):
    with open_slide(slide_a) as reader:
        assert reader.decoder == "tifffile"
        assert reader.info.vendor == "aperio" and reader.info.mpp == 0.5


def test_out_of_bounds_reads_white(slide_a):
    with open_slide(slide_a, decoder="tifffile") as reader:
        region = reader.read_region(3000, 3000, 0, 200, 200)
    assert (region[100:, 100:] == 255).all()


def test_tifffile_fallback_for_tiff_openslide_rejects(tmp_path):
    # A flat, stripped RGB TIFF: openslide refuses it, tifffile reads it as a single-level slide.
    img = np.tile(data.immunohistochemistry(), (2, 2, 1))
    path = tmp_path / "flat_scan.tiff"
    tifffile.imwrite(path, img, photometric="rgb", resolution=(1e4 / 0.5, 1e4 / 0.5), resolutionunit="CENTIMETER")
    with open_slide(path) as reader:
        assert reader.decoder == "tifffile"
        assert reader.info.level_dimensions == ((1024, 1024),)
        assert reader.info.mpp == pytest.approx(0.5)
        np.testing.assert_array_equal(reader.read_region(10, 20, 0, 64, 32), img[20:52, 10:74])


def test_missing_mpp_and_override(tmp_path):
    path = write_demo_slide(DemoSlideSpec("nompp", 1024, 1024, seed=3, mpp=None, levels=2), tmp_path)
    with open_slide(path) as reader:
        assert reader.info.mpp is None
    with open_slide(path, mpp_override=0.25) as reader:
        assert reader.info.mpp == 0.25
    with pytest.raises(SlideError, match="nompp.svs.*mpp_override must be > 0"):
        open_slide(path, mpp_override=-1)


def test_zero_byte_file(tmp_path):
    path = tmp_path / "empty.svs"
    path.touch()
    with pytest.raises(SlideError, match=r"empty\.svs.*empty \(0 bytes\)"):
        open_slide(path)


def test_missing_file(tmp_path):
    with pytest.raises(SlideError, match=r"nowhere\.svs.*no such slide file"):
        open_slide(tmp_path / "nowhere.svs")


def test_truncated_file(tmp_path, slide_a):
    path = tmp_path / "cut.svs"
    path.write_bytes(slide_a.read_bytes()[:5000])
    with pytest.raises(SlideError, match=r"cut\.svs"), open_slide(path) as reader:
        reader.read_region(0, 0, 0, 512, 512)


def test_non_slide_file(tmp_path):
    path = tmp_path / "notes.svs"
    path.write_text("this is not a slide\n" * 100)
    with pytest.raises(SlideError, match=r"notes\.svs.*(not a readable slide|cannot be read)"):
        open_slide(path)
    other = tmp_path / "photo.png"
    shutil.copy(path, other)
    with pytest.raises(SlideError, match=r"photo\.png.*not a readable slide"):
        open_slide(other)
