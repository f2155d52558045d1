"""The code location loads, and the layering rules hold (ops never imports Dagster)."""

from __future__ import annotations

import ast
from pathlib import Path

import dagster as dg

ROOT = Path(__file__).resolve().parents[1]


def test_definitions_load():
    from pipelines import defs

    repo = defs.get_repository_def()
    keys = {k.to_user_string() for k in repo.asset_graph.get_all_asset_keys()}
    assert {"tile_grid", "tissue_tiles"} <= keys
    assert defs.resolve_job_def("tiling") is not None
    assert isinstance(defs.resolve_sensor_def("slide_inbox_sensor"), dg.SensorDefinition)


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module.split(".")[0])
    return names


def test_layering():
    for path in (ROOT / "ops").rglob("*.py"):
        assert not _imports(path) & {"dagster", "assets", "resources", "pipelines"}, f"{path} breaks layering"
    for path in (ROOT / "assets").rglob("*.py"):
        assert "pipelines" not in _imports(path), f"{path} imports pipelines"
    for path in (ROOT / "resources").rglob("*.py"):
        assert not _imports(path) & {"assets", "pipelines"}, f"{path} breaks layering"
