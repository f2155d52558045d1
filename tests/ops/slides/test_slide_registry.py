"""Slide registry: stable keys, opaque ids, duplicates, removals, non-slides."""

from __future__ import annotations

import shutil

from ops.slides.registry import SlideRegistry, sanitize_key, slide_id_for


def test_sanitize_key():
    assert sanitize_key("Patient 12 (HE) #3") == "patient_12_he_3"
    assert sanitize_key("___") == "slide"
    assert sanitize_key("ok-key_1") == "ok-key_1"


def test_scan_adds_dedups_removes_and_ignores(tmp_path, slide_a, slide_b):
    inbox = tmp_path / "slides"
    inbox.mkdir()
    shutil.copy(slide_a, inbox / "Case A.svs")
    shutil.copy(slide_b, inbox / "case_b.svs")
    (inbox / "readme.txt").write_text("not a slide")
    reg = SlideRegistry(tmp_path / "registry.json")
    scan = reg.scan(inbox)
    assert sorted(e.key for e in scan.added) == ["case_a", "case_b"]
    assert scan.ignored == ["readme.txt"]
    entry = reg.get("case_a")
    assert entry.slide_id == slide_id_for(entry.sha256) and entry.slide_id.startswith("sl-")
    assert "case" not in entry.slide_id
    reg.save()

    # Stable across runs: a fresh registry object reads the same keys and a rescan changes nothing.
    reg2 = SlideRegistry(tmp_path / "registry.json")
    assert reg2.entries == reg.entries
    again = reg2.scan(inbox)
    assert not again.added and not again.removed and not again.duplicates

    # Same content under another name: a duplicate, not a new partition.
    shutil.copy(slide_a, inbox / "copy_of_a.svs")
    dup = reg2.scan(inbox)
    assert dup.duplicates == [("copy_of_a.svs", "case_a")] and not dup.added

    # A vanished file's partition goes away.
    (inbox / "case_b.svs").unlink()
    gone = reg2.scan(inbox)
    assert [e.key for e in gone.removed] == ["case_b"]
    assert "case_b" not in reg2.entries


def test_key_collision_gets_hash_suffix(tmp_path, slide_a, slide_b):
    inbox = tmp_path / "slides"
    inbox.mkdir()
    shutil.copy(slide_a, inbox / "x.svs")
    shutil.copy(slide_b, inbox / "X.tiff")
    reg = SlideRegistry(tmp_path / "r.json")
    keys = sorted(e.key for e in reg.scan(inbox).added)
    assert keys[0] == "x" and keys[1].startswith("x_") and len(keys[1]) == 8
