"""Quality gates run inside the jobs, on a real Dagster instance; a failed blocking gate stops the run downstream."""

from __future__ import annotations

import shutil

import dagster as dg
import pytest

from ops.slides.demo_slides import DemoSlideSpec, write_demo_slide
from pipelines import defs
from pipelines.cli import get_instance, sync_slides

pytestmark = pytest.mark.integration


def _checks(result: dg.ExecuteInProcessResult) -> dict[str, dg.AssetCheckEvaluation]:
    return {c.check_name: c for c in result.get_asset_check_evaluations()}


def test_slide_without_tissue_is_stopped_before_decoding(factory_home):
    # Glass only, no resolution recorded: nothing to tile, and no physical scale either.
    spec = DemoSlideSpec("blank", 2048, 2048, seed=5, mpp=None, tissue_share=0.0, pen_marks=0, dust_specks=0)
    write_demo_slide(spec, factory_home / "slides")
    instance = get_instance()
    assert sync_slides(instance) == ["blank"]
    result = defs.resolve_job_def("tiling").execute_in_process(
        partition_key="blank",
        instance=instance,
        raise_on_error=False,
        run_config={"ops": {"tile_grid": {"config": {"target_mpp": None}}}},
    )
    assert not result.success
    checks = _checks(result)
    assert set(checks) == {"tissue_found", "mpp_known"}, "tiles_kept never ran: tissue_tiles was not executed"
    found = checks["tissue_found"]
    assert not found.passed and found.severity == dg.AssetCheckSeverity.ERROR
    assert {k: v.value for k, v in found.metadata.items()} == {"candidates": 0, "min_candidates": 1}
    mpp = checks["mpp_known"]
    assert not mpp.passed and mpp.severity == dg.AssetCheckSeverity.WARN
    assert instance.get_latest_materialization_event(dg.AssetKey("tile_grid")) is not None
    assert instance.get_latest_materialization_event(dg.AssetKey("tissue_tiles")) is None
    assert not (factory_home / "tiling" / "blank" / "tiles").exists(), "nothing was decoded"


def test_gates_pass_on_a_real_slide_and_take_their_threshold_from_config(factory_home, slide_a):
    (factory_home / "slides").mkdir()
    shutil.copy(slide_a, factory_home / "slides" / "case_a.svs")
    instance = get_instance()
    sync_slides(instance)
    tiling = defs.resolve_job_def("tiling")
    result = tiling.execute_in_process(partition_key="case_a", instance=instance)
    checks = _checks(result)
    assert all(c.passed for c in checks.values()) and set(checks) == {"tissue_found", "mpp_known", "tiles_kept"}
    kept = result.asset_materializations_for_node("tissue_tiles")[0].metadata["kept"].value
    assert checks["tiles_kept"].metadata["kept"].value == kept > 0
    assert checks["mpp_known"].metadata["tile_mpp"].value == pytest.approx(0.5)

    strict = tiling.execute_in_process(
        partition_key="case_a",
        instance=instance,
        raise_on_error=False,
        run_config={"ops": {"tissue_tiles_tiles_kept": {"config": {"min_kept": kept + 1}}}},
    )
    assert not strict.success
    gate = _checks(strict)["tiles_kept"]
    assert not gate.passed and gate.metadata["min_kept"].value == kept + 1
    assert f"kept = {kept}, required >= {kept + 1}" in gate.description
