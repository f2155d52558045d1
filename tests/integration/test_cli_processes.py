"""The CLI's multiprocess runs (the demo's factory stage): steps in their own processes, the partition kept."""

from __future__ import annotations

import os
import shutil

import dagster as dg
import pytest

from pipelines.cli import _run_job, get_instance, sync_slides

pytestmark = pytest.mark.integration


def test_a_run_in_processes_runs_each_step_outside_the_cli_and_materializes_its_partition(factory_home, slide_a):
    inbox = factory_home / "slides"
    inbox.mkdir()
    shutil.copy(slide_a, inbox / "case_a.svs")
    instance = get_instance()
    [key] = sync_slides(instance)
    assert _run_job(instance, "tiling", [key], "tiling", processes=2) == {key: True}
    [run] = instance.get_runs(dg.RunsFilter(job_name="tiling"))
    assert run.tags["dagster/partition"] == key
    starts = [e.dagster_event for e in instance.all_logs(run.run_id, of_type=dg.DagsterEventType.STEP_START)]
    assert {"tile_grid", "tissue_tiles"} <= {e.step_key for e in starts}  # and their checks
    assert os.getpid() not in {e.pid for e in starts}  # forked step processes, not this one
    for asset in ("tile_grid", "tissue_tiles"):
        event = instance.get_latest_materialization_event(dg.AssetKey(asset))
        assert event is not None and event.dagster_event.partition == key
