"""Tiling assets in a real Dagster instance (sqlite under a temporary DAGSTER_HOME)."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import dagster as dg
import pandas as pd
import pytest
from slide_helpers import broken_slides

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
    (inbox / "scan.svs").write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(4096))  # a PNG renamed .svs: refused
    storage = FactoryStorage(home=str(factory_home))
    ctx = dg.build_sensor_context(instance=instance, resources={"storage": storage})
    result = slide_inbox_sensor(ctx)
    assert [r.partition_key for r in result.run_requests] == ["case_a"]
    assert result.dynamic_partitions_requests[0].partition_keys == ["case_a"]
    assert "is a PNG image" in storage.registry().refused["scan.svs"][2]
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


def _register_as_is(storage: FactoryStorage, instance, path: Path) -> str:
    """Register an inbox file without the door check, as a file registered before it broke (or by an old version)."""
    from ops.slides.registry import SlideEntry, file_sha256, sanitize_key, slide_id_for, slide_stem

    registry = storage.registry()
    digest, stat = file_sha256(path), path.stat()
    key = sanitize_key(slide_stem(path.name))
    registry.entries[key] = SlideEntry(key, path.name, digest, slide_id_for(digest), stat.st_size, stat.st_mtime_ns)
    registry.save()
    instance.add_dynamic_partitions("slides", [key])
    return key


def test_materialize_two_slides_and_a_bad_one(factory_home, instance, slide_a, slide_b):
    inbox = factory_home / "slides"
    inbox.mkdir()
    shutil.copy(slide_a, inbox / "case_a.svs")
    shutil.copy(slide_b, inbox / "case_b.svs")
    (inbox / "broken.svs").write_bytes(b"\x00" * 4096)
    keys = sync_slides(instance)
    assert keys == ["case_a", "case_b"], "the broken file is refused at the door"
    _register_as_is(FactoryStorage(home=str(factory_home)), instance, inbox / "broken.svs")
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
        assert 0 < meta["store_ratio"].value < 1.0 and meta["copied_tiles"].value == len(table)
    bad = dg.materialize(
        [tile_grid, tissue_tiles],
        partition_key="broken",
        instance=instance,
        resources=_resources(factory_home),
        raise_on_error=False,
    )
    assert not bad.success
    failure = next(e for e in bad.all_events if e.is_step_failure)
    assert "broken.svs: the extension says .svs" in failure.step_failure_data.error.to_string()
    # The failed partition wrote nothing and left the others intact.
    assert not (factory_home / "tiling" / "broken").exists()
    assert (factory_home / "tiling" / "case_a" / "tiles" / "tiles.parquet").exists()
    records = instance.fetch_materializations(dg.AssetKey("tissue_tiles"), limit=10).records
    assert {r.partition_key for r in records} == {"case_a", "case_b"}


def test_tile_grid_refuses_each_broken_class_and_good_slides_still_tile(factory_home, instance, slide_a, tmp_path):
    inbox = factory_home / "slides"
    inbox.mkdir()
    storage = FactoryStorage(home=str(factory_home))
    broken = broken_slides(slide_a, tmp_path / "broken")
    keys = {}
    for path, reason in broken.values():
        shutil.copy(path, inbox / path.name)
        keys[_register_as_is(storage, instance, inbox / path.name)] = (path.name, reason)
    for key, (file, reason) in keys.items():
        run = dg.materialize(
            [tile_grid], partition_key=key, instance=instance, resources=_resources(factory_home), raise_on_error=False
        )
        assert not run.success, key
        text = next(e for e in run.all_events if e.is_step_failure).step_failure_data.error.to_string()
        refusal = next(ln for ln in text.splitlines() if ln.startswith("ops.slides.reader.SlideError: "))
        assert file in refusal and re.search(reason, refusal), refusal
    shutil.copy(slide_a, inbox / "case_a.svs")
    assert "case_a" in sync_slides(instance)
    good = dg.materialize(
        [tile_grid, tissue_tiles], partition_key="case_a", instance=instance, resources=_resources(factory_home)
    )
    assert good.success


def test_cli_slides_add_refuses_each_broken_class(factory_home, slide_a, tmp_path):
    env = {**os.environ, "HISTOFACTORY_HOME": str(factory_home), "DAGSTER_HOME": str(factory_home / "dagster")}
    cli = str(Path(sys.executable).parent / "histofactory")
    broken = broken_slides(slide_a, tmp_path / "broken")
    paths = [str(path) for path, _ in broken.values()]
    add = subprocess.run(
        [cli, "slides", "add", str(slide_a), *paths], env=env, capture_output=True, text=True, timeout=300
    )
    assert add.returncode == 1, add.stderr
    for path, reason in broken.values():
        line = next((ln for ln in add.stderr.splitlines() if ln.startswith(f"refused: {path}:")), None)
        assert line and re.search(reason, line), (path.name, add.stderr[-3000:])
    assert "Traceback" not in add.stderr and "zero-size array" not in add.stderr
    assert f"{len(broken)} of {len(broken) + 1} files refused" in add.stderr
    listed = subprocess.run([cli, "slides", "list"], env=env, capture_output=True, text=True, timeout=300)
    assert listed.stdout.split() == ["case_a"], "the good slide is registered, no broken one is"
    assert sorted(p.name for p in (factory_home / "slides").iterdir()) == ["case_a.svs"]


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
