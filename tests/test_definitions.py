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
    assert {
        "tile_grid",
        "tissue_tiles",
        "training_tiles",
        "gan_model",
        "generated_samples",
        "annotations",
        "generated_features",
        "pixel_classifier",
        "classifier_eval",
        "tile_annotations",
        "mask_bank",
        "autoencoder",
        "ldm_model",
        "synthetic_dataset",
        "real_annotations",
        "label_judge",
        "downstream_eval",
    } == keys
    for job in ("tiling", "factory_demo", "factory_paper", "export", "downstream_demo", "downstream_paper"):
        assert defs.resolve_job_def(job) is not None
    assert defs.resolve_schedule_def("weekly_retraining").cron_schedule == "0 3 * * 0"
    assert isinstance(defs.resolve_sensor_def("slide_inbox_sensor"), dg.SensorDefinition)


def test_presets_configure_the_jobs():
    from pipelines.presets import load_preset

    demo, paper = load_preset("demo"), load_preset("paper")
    assert paper["ops"]["gan_model"]["config"]["preset"] == "paper"
    assert paper["ops"]["generated_samples"]["config"] == {"n": 500, "psi": 0.7}
    assert paper["ops"]["generated_features"]["config"]["blocks"] == 5
    assert paper["ops"]["pixel_classifier"]["config"]["members"] == 10
    ann = paper["ops"]["annotations"]["config"]
    assert (ann["n_train"], ann["n_val"], ann["n_test"]) == (16, 4, 16)
    assert demo["ops"]["annotations"]["config"]["demo_annotator"] is True
    assert demo["ops"]["synthetic_dataset"]["config"]["generators"] == ["stylegan2", "ldm"]
    assert paper["ops"]["ldm_model"]["config"]["preview_steps"] == 200, "DISC samples with 200 DDIM steps"
    factory = {n.name for n in defs_job("factory_demo").graph.node_defs}
    assert {"tile_annotations", "mask_bank", "autoencoder", "ldm_model"} <= factory
    import pytest

    with pytest.raises(ValueError, match="unknown preset 'fast'; known presets: demo, paper"):
        load_preset("fast")


def defs_job(name: str):
    from pipelines import defs

    return defs.resolve_job_def(name)


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module.split(".")[0])
    return names


FIRST_PARTY = {"ops", "assets", "resources", "pipelines"}


def test_layering():
    """pipelines -> assets -> ops and resources; ops is plain science and never reaches up a layer."""
    for path in (ROOT / "ops").rglob("*.py"):
        assert not _imports(path) & {"dagster", "assets", "resources", "pipelines"}, f"{path} breaks layering"
    for path in (ROOT / "assets").rglob("*.py"):
        assert _imports(path) & FIRST_PARTY <= {"assets", "ops", "resources"}, f"{path} imports pipelines"
    for path in (ROOT / "resources").rglob("*.py"):
        assert not _imports(path) & {"assets", "pipelines"}, f"{path} breaks layering"


def test_ops_is_one_package_per_stage():
    """ops/ holds stage packages only, each with a docstring saying what the stage does, and tests/ops mirrors it."""
    loose = sorted(p.name for p in (ROOT / "ops").glob("*.py") if p.name != "__init__.py")
    assert not loose, f"modules outside a stage package: {loose}"
    stages = sorted(p.name for p in (ROOT / "ops").iterdir() if (p / "__init__.py").exists())
    for stage in stages:
        doc = ast.get_docstring(ast.parse((ROOT / "ops" / stage / "__init__.py").read_text()))
        assert doc and len(doc) > 40, f"ops/{stage}/__init__.py needs a docstring saying what the stage does"
        assert list((ROOT / "tests" / "ops" / stage).glob("test_*.py")), f"tests/ops/{stage}/ has no tests"


def test_every_asset_group_has_its_stage():
    """Each asset group is named for a stage: its assets module, its ops package and its ops tests share the name."""
    from pipelines import defs

    graph = defs.get_repository_def().asset_graph
    groups = {graph.get(key).group_name for key in graph.get_all_asset_keys()}
    assert groups == {"slides", "gan", "labelling", "diffusion", "export", "evaluation"}
    for group in groups:
        assert (ROOT / "assets" / f"{group}.py").exists(), f"group {group} has no assets/{group}.py"
        assert (ROOT / "ops" / group / "__init__.py").exists(), f"group {group} has no ops/{group}/ package"
        assert (ROOT / "tests" / "ops" / group).is_dir(), f"group {group} has no tests/ops/{group}/"
