"""Validation at the door: each class of broken file is refused by name, in words, with the fix."""

from __future__ import annotations

import re
import shutil

import pytest
from slide_helpers import broken_slides, corrupt_tile

from ops.slides.reader import SlideError
from ops.slides.registry import SlideRegistry
from ops.slides.validation import validate_slide


@pytest.fixture(scope="module")
def broken(slide_a, tmp_path_factory) -> dict:
    return broken_slides(slide_a, tmp_path_factory.mktemp("broken"))


CLASSES = (
    "corrupt_tiles",
    "level0_unreadable",
    "tiny_tiff",
    "no_usable_level",
    "extension_lies",
    "zero_levels",
    "mpp_zero",
    "mpp_nan",
)


@pytest.mark.parametrize("name", CLASSES)
def test_each_broken_class_is_refused_by_name(broken, name):
    path, reason = broken[name]
    with pytest.raises(SlideError) as caught:
        validate_slide(path)
    message = str(caught.value)
    assert message.startswith(str(path)), message
    assert re.search(reason, message), message
    assert any(fix in message for fix in ("Re-export", "add the", "mpp_override", "add it again")), message
    assert "zero-size array" not in message


def test_a_good_slide_passes(slide_a):
    check = validate_slide(slide_a)
    assert check.sampled_tiles == 16 and check.bad_tiles == 0
    assert check.info.level_dimensions[0] == (3072, 3072) and check.decoder == "tifffile"


def test_one_corrupt_tile_mid_slide_is_the_tilers_business(slide_a, tmp_path):
    path = tmp_path / "one_bad_tile.svs"
    shutil.copy(slide_a, path)
    corrupt_tile(path, 0)  # the top-left tile: sampled, and the only one that fails
    assert validate_slide(path).bad_tiles == 1


def test_mpp_override_accepts_a_slide_with_impossible_mpp(broken):
    path, _ = broken["mpp_zero"]
    assert validate_slide(path, mpp_override=0.5).info.mpp == 0.5


def test_registry_scan_refuses_once_and_rechecks_when_the_file_changes(broken, slide_a, tmp_path):
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    shutil.copy(slide_a, inbox / "good.svs")
    shutil.copy(broken["level0_unreadable"][0], inbox / "bad.svs")
    registry = SlideRegistry(tmp_path / "registry.json")
    scan = registry.scan(inbox, check=validate_slide)
    assert [e.key for e in scan.added] == ["good"]
    assert [name for name, _ in scan.refused] == ["bad.svs"]
    assert "tile data at level 0 cannot be decoded" in scan.refused[0][1]
    registry.save()
    again = SlideRegistry(tmp_path / "registry.json").scan(inbox, check=validate_slide)
    assert not again.refused and not again.added, "an unchanged refused file is not re-reported"
    shutil.copy(slide_a.with_name("case_b.svs"), inbox / "bad.svs")  # replaced by a good slide
    fixed = SlideRegistry(tmp_path / "registry.json").scan(inbox, check=validate_slide)
    assert [e.key for e in fixed.added] == ["bad"]
