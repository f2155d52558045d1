"""Tiling assets in a real Dagster instance (sqlite under a temporary DAGSTER_HOME)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import dagster as dg
import pandas as pd
import pytest

from assets.slides import tile_grid, tissue_tiles
from ops.slides.tile_store import open_tile_array
from pipelines.cli import get_instance, sync_slides
from pipelines.sensors import slide_inbox_sensor
from resources import DaskResource, FactoryStorage

pytestmark = pytest.mark.integration


def _resources(home: Path) -> dict:
    return {"storage": FactoryStorage(home=str(home)), "dask": DaskResource(workers=2)}


@pytest.fixture()
def instance(factory_home):
    return get_instance()


def test_sensor_registers_partitions_and_requests_runs(factory_home, instance, slide_a, slide_b):
    inbox = factory_home / "slides"
    inbox.mkdir()
    shutil.copy(slide_a, inbox / "case_a.svs")
    (inbox / "notes.txt").write_text("not a slide")
    storage = FactoryStorage(home=str(factory_home))
    ctx = dg.build_sensor_context(instance=instance, resources={"storage": storage})
    result = slide_inbox_sensor(ctx)
    assert [r.partition_key for r in result.run_requests] == ["case_a"]
    assert result.dynamic_partitions_requests[0].partition_keys == ["case_a"]
    instance.add_dynamic_partitions("slides", ["case_a"])

    shutil.copy(slide_b, inbox / "case_b.svs")
    shutil.copy(slide_a, inbox / "same_as_a.svs")  # duplicate content: reported, not added
    result = slide_inbox_sensor(dg.build_sensor_context(instance=instance, resources={"storage": storage}))
    assert [r.partition_key for r in result.run_requests] == ["case_b"]
    instance.add_dynamic_partitions("slides", ["case_b"])

    (inbox / "same_as_a.svs").unlink()
    (inbox / "case_a.svs").unlink()
    (inbox / "case_b.svs").rename(inbox / "case_c.svs")  # a renamed file is a new partition
    result = slide_inbox_sensor(dg.build_sensor_context(instance=instance, resources={"storage": storage}))
    assert [r.partition_key for r in result.run_requests] == ["case_c"]
    kinds = {type(r).__name__: r.partition_keys for r in result.dynamic_partitions_requests}
    assert kinds == {"AddDynamicPartitionsRequest": ["case_c"], "DeleteDynamicPartitionsRequest": ["case_a", "case_b"]}


def test_materialize_two_slides_and_a_bad_one(factory_home, instance, slide_a, slide_b):
    inbox = factory_home / "slides"
    inbox.mkdir()
    shutil.copy(slide_a, inbox / "case_a.svs")
    shutil.copy(slide_b, inbox / "case_b.svs")
    (inbox / "broken.svs").write_bytes(b"\x00" * 4096)
    keys = sync_slides(instance)
    assert keys == ["broken", "case_a", "case_b"]
    for key in ("case_a", "case_b"):
        result = dg.materialize(
            [tile_grid, tissue_tiles], partition_key=key, instance=instance, resources=_resources(factory_home)
        )
        assert result.success
        table = pd.read_parquet(factory_home / "tiling" / key / "tiles" / "tiles.parquet")
        arr = open_tile_array(factory_home / "tiling" / key / "tiles" / "tiles.zarr")
        assert arr.shape[0] == len(table) > 0
        mats = result.asset_materializations_for_node("tissue_tiles")
        meta = mats[0].metadata
        assert meta["kept"].value == len(table)
        assert meta["kept_grid"].value.startswith("![kept tiles")
        assert meta["package_versions"].value["zarr"].startswith("3.")
        assert meta["slide_id"].value.startswith("sl-")
    bad = dg.materialize(
        [tile_grid, tissue_tiles],
        partition_key="broken",
        instance=instance,
        resources=_resources(factory_home),
        raise_on_error=False,
    )
    assert not bad.success
    failure = next(e for e in bad.all_events if e.is_step_failure)
    assert "broken.svs: cannot be read as a slide" in failure.step_failure_data.error.to_string()
    # The failed partition wrote nothing and left the others intact.
    assert not (factory_home / "tiling" / "broken").exists()
    assert (factory_home / "tiling" / "case_a" / "tiles" / "tiles.parquet").exists()
    records = instance.fetch_materializations(dg.AssetKey("tissue_tiles"), limit=10).records
    assert {r.partition_key for r in records} == {"case_a", "case_b"}


def test_cli_slides_add_then_dagster_backfill(factory_home, slide_a, tmp_path):
    env = {**os.environ, "HISTOFACTORY_HOME": str(factory_home), "DAGSTER_HOME": str(factory_home / "dagster")}
    bindir = Path(sys.executable).parent
    add = subprocess.run(
        [str(bindir / "histofactory"), "slides", "add", str(slide_a)],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert add.returncode == 0, add.stderr
    listed = subprocess.run(
        [str(bindir / "histofactory"), "slides", "list"], env=env, capture_output=True, text=True, timeout=300
    )
    assert listed.stdout.split() == ["case_a"]
    # Run from an unrelated directory: the installed code location must be found by module name.
    run = subprocess.run(
        [
            str(bindir / "dagster"),
            "asset",
            "materialize",
            "-m",
            "pipelines",
            "--select",
            "tile_grid,tissue_tiles",
            "--partition",
            "case_a",
        ],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    table = pd.read_parquet(factory_home / "tiling" / "case_a" / "tiles" / "tiles.parquet")
    assert len(table) > 0
    plan = json.loads((factory_home / "tiling" / "case_a" / "grid" / "plan.json").read_text())
    assert plan["tile_size"] == 512
    instance = dg.DagsterInstance.from_config(str(factory_home / "dagster"))
    assert instance.get_latest_materialization_event(dg.AssetKey("tissue_tiles")) is not None


def test_cli_help(factory_home):
    bindir = Path(sys.executable).parent
    for args in (["--help"], ["demo", "--help"], ["slides", "add", "--help"], ["slides", "list", "--help"]):
        out = subprocess.run([str(bindir / "histofactory"), *args], capture_output=True, text=True, timeout=120)
        assert out.returncode == 0 and "usage: histofactory" in out.stdout


def test_cli_backfill_materializes_exactly_the_requested_slides(factory_home, slide_a, slide_b, tmp_path):
    env = {**os.environ, "HISTOFACTORY_HOME": str(factory_home), "DAGSTER_HOME": str(factory_home / "dagster")}
    cli = str(Path(sys.executable).parent / "histofactory")
    assert subprocess.run([cli, "slides", "add", str(slide_a), str(slide_b)], env=env, timeout=300).returncode == 0
    run = subprocess.run(
        [cli, "backfill", "slides", "case_b"], env=env, cwd=tmp_path, capture_output=True, text=True, timeout=600
    )
    assert run.returncode == 0, run.stderr[-3000:]
    instance = dg.DagsterInstance.from_config(str(factory_home / "dagster"))
    done = {r.partition_key for r in instance.fetch_materializations(dg.AssetKey("tissue_tiles"), limit=10).records}
    assert done == {"case_b"}
    dry = subprocess.run([cli, "backfill", "stale", "--dry-run"], env=env, capture_output=True, text=True, timeout=300)
    assert "slides: case_a" in dry.stdout and "case_b" not in dry.stdout.split("factory")[0]
    bad = subprocess.run([cli, "backfill", "slides", "nope"], env=env, capture_output=True, text=True, timeout=300)
    assert bad.returncode == 2 and "unknown slide partitions ['nope']" in bad.stderr
