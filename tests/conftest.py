"""Shared fixtures: small real demo slides (session scoped) and isolated data roots."""

from __future__ import annotations

from pathlib import Path

import pytest

from ops.slides.demo_slides import DemoSlideSpec, write_demo_slide

# Two small slides that still have pyramids, background, pen marks and dust (each ~3 s to write).
SMALL_SLIDES = (
    DemoSlideSpec("case_a", 3072, 3072, seed=101, tissue_share=0.4),
    DemoSlideSpec("case_b", 4096, 2048, seed=202, tissue_share=0.4),
)


@pytest.fixture(scope="session")
def slide_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder with the two small demo slides (read-only for tests: copy before modifying)."""
    out = tmp_path_factory.mktemp("slides")
    for spec in SMALL_SLIDES:
        write_demo_slide(spec, out)
    return out


@pytest.fixture(scope="session")
def slide_a(slide_dir: Path) -> Path:
    return slide_dir / "case_a.svs"


@pytest.fixture(scope="session")
def slide_b(slide_dir: Path) -> Path:
    return slide_dir / "case_b.svs"


@pytest.fixture()
def factory_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty data root and Dagster home, exported as the project expects."""
    home = tmp_path / "data"
    home.mkdir()
    monkeypatch.setenv("HISTOFACTORY_HOME", str(home))
    monkeypatch.setenv("DAGSTER_HOME", str(home / "dagster"))
    (home / "dagster").mkdir()
    return home
