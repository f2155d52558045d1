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
        "genseg_model",
        "synthetic_dataset",
        "real_annotations",
        "label_judge",
        "downstream_eval",
        "federated_gan",
        "federated_tile_check",
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
    assert demo["ops"]["synthetic_dataset"]["config"]["generators"] == ["stylegan2", "ldm", "genseg"]
    assert paper["ops"]["ldm_model"]["config"]["preview_steps"] == 200, "DISC samples with 200 DDIM steps"
    factory = {n.name for n in defs_job("factory_demo").graph.node_defs}
    assert {"tile_annotations", "mask_bank", "autoencoder", "ldm_model", "genseg_model"} <= factory
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
    assert groups == {"slides", "gan", "labelling", "diffusion", "genseg", "export", "evaluation", "federated"}
    for group in groups:
        assert (ROOT / "assets" / f"{group}.py").exists(), f"group {group} has no assets/{group}.py"
        assert (ROOT / "ops" / group / "__init__.py").exists(), f"group {group} has no ops/{group}/ package"
        assert (ROOT / "tests" / "ops" / group).is_dir(), f"group {group} has no tests/ops/{group}/"


# Quality gates that must stop the run's downstream assets when they fail, per stage; the rest only warn.
BLOCKING_GATES = {
    "slides": {("tile_grid", "tissue_found"), ("tissue_tiles", "tiles_kept")},
    "gan": {("gan_model", "swd_below_untrained")},
    "labelling": {("classifier_eval", "dice_above_chance")},
    "diffusion": {("ldm_model", "mask_agreement_above_chance")},
    "genseg": {("genseg_model", "genseg_follows_masks")},
    "export": {("synthetic_dataset", "near_copies_rare")},
    "evaluation": set(),
}
WARNING_GATES = {
    ("tile_grid", "mpp_known"),
    ("synthetic_dataset", "label_agreement_floor"),
    ("downstream_eval", "synthetic_helps"),
}


def test_every_stage_has_quality_gates_and_the_blocking_ones_block():
    from pipelines import defs

    graph = defs.get_repository_def().asset_graph
    by_stage: dict[str, set[tuple[str, str]]] = {}
    blocking = set()
    for key in graph.asset_check_keys:
        pair = (key.asset_key.to_user_string(), key.name)
        by_stage.setdefault(graph.get(key.asset_key).group_name, set()).add(pair)
        if graph.get_check_spec(key).blocking:
            blocking.add(pair)
    assert set(by_stage) == set(BLOCKING_GATES), f"stages without a quality gate: {set(BLOCKING_GATES) - set(by_stage)}"
    assert blocking == set().union(*BLOCKING_GATES.values())
    assert set().union(*by_stage.values()) == blocking | WARNING_GATES
    for job, gates in {
        "tiling": {"tissue_found", "mpp_known", "tiles_kept"},
        "factory_demo": {
            "swd_below_untrained",
            "dice_above_chance",
            "mask_agreement_above_chance",
            "genseg_follows_masks",
        },
        "export": {"near_copies_rare", "label_agreement_floor"},
        "downstream_demo": {"synthetic_helps"},
    }.items():
        assert {k.name for k in defs.resolve_job_def(job).asset_layer.asset_graph.asset_check_keys} == gates, job


def _pipelines_imports(path: Path) -> set[str]:
    """``pipelines`` modules a module imports, at any depth of the file (lazy imports inside functions count)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module)
            found |= {f"{node.module}.{a.name}" for a in node.names}
    return {"pipelines.__init__" if n == "pipelines" else n for n in found if n.split(".")[0] == "pipelines"}


def test_pipelines_modules_import_no_cycle():
    """definitions assembles, the others never import it back (a cycle makes import order decide what loads)."""
    modules = {f"pipelines.{p.stem}": p for p in (ROOT / "pipelines").glob("*.py")}
    edges = {name: _pipelines_imports(path) & set(modules) for name, path in modules.items()}
    edges["pipelines.__init__"].discard("pipelines.__init__")

    def cycle_from(node: str, trail: tuple[str, ...]) -> tuple[str, ...] | None:
        if node in trail:
            return (*trail[trail.index(node) :], node)
        for nxt in sorted(edges[node]):
            found = cycle_from(nxt, (*trail, node))
            if found:
                return found
        return None

    for name in sorted(modules):
        cycle = cycle_from(name, ())
        assert cycle is None, "import cycle: " + " -> ".join(cycle)
