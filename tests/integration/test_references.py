"""The reference IO manager in a real Dagster instance: typed round trip, partition dicts, optional and missing
upstreams, and nothing but small JSON files on disk."""

import json
from pathlib import Path

import dagster as dg
import pytest

from resources.references import (
    GanModelRef,
    ReferenceIOManager,
    TissueTilesRef,
    TrainingTilesRef,
    read_reference,
    write_reference,
)

pytestmark = pytest.mark.integration

slides = dg.StaticPartitionsDefinition(["a", "b", "c"])


@dg.asset(partitions_def=slides)
def tiles(context: dg.AssetExecutionContext) -> dg.MaterializeResult:
    key = context.partition_key
    return dg.MaterializeResult(value=TissueTilesRef(path=f"/data/{key}", slide_id=f"sl-{key}", kept=3))


@dg.asset
def split(tiles: dict[str, TissueTilesRef]) -> dg.MaterializeResult:
    assert all(isinstance(ref, TissueTilesRef) for ref in tiles.values())
    return dg.MaterializeResult(
        value=TrainingTilesRef(path="/data/training.parquet", content_hash=",".join(sorted(tiles))),
        metadata={"slides": sorted(tiles)},
    )


@dg.asset
def model(split: TrainingTilesRef) -> dg.MaterializeResult:
    assert isinstance(split, TrainingTilesRef)
    ref = GanModelRef(
        path="/data/gan/ckpt.pt",
        run_dir="/data/gan",
        model_version="1",
        preset="demo",
        images_seen=48,
        train_slide_ids=["sl-a"],
        step=12,
        resolution=64,
        mlflow_run_id="abc",
    )
    return dg.MaterializeResult(value=ref, metadata={"seen_split": split.content_hash})


@dg.asset
def export(split: TrainingTilesRef, model: GanModelRef | None) -> dg.MaterializeResult:
    return dg.MaterializeResult(metadata={"model_step": model.step if model else -1})


@pytest.fixture()
def instance() -> dg.DagsterInstance:
    return dg.DagsterInstance.ephemeral()


def _materialize(assets, selection, home: Path, instance, partition_key=None) -> dg.ExecuteInProcessResult:
    return dg.materialize(
        assets,
        selection=selection,
        instance=instance,
        resources={"io_manager": ReferenceIOManager(home=str(home))},
        partition_key=partition_key,
    )


def test_partitions_arrive_as_a_dict_and_refs_round_trip_typed(tmp_path, instance):
    for key in ("a", "c"):
        assert _materialize([tiles], None, tmp_path, instance, key).success
    result = _materialize([tiles, split, model, export], ["split", "model", "export"], tmp_path, instance)
    assert result.success
    assert result.asset_materializations_for_node("split")[0].metadata["slides"].value == ["a", "c"]
    assert result.asset_materializations_for_node("model")[0].metadata["seen_split"].value == "a,c"
    assert result.asset_materializations_for_node("export")[0].metadata["model_step"].value == 12

    stored = read_reference(tmp_path / "refs" / "model" / "_.json")
    assert isinstance(stored, GanModelRef) and stored.step == 12 and stored.train_slide_ids == ["sl-a"]
    assert read_reference(tmp_path / "refs" / "tiles" / "c.json").slide_id == "sl-c"
    # Only small JSON files, each naming its class: nothing pickled (an asset without a value writes nothing).
    files = [p for p in (tmp_path / "refs").rglob("*") if p.is_file()]
    assert sorted(p.relative_to(tmp_path / "refs").as_posix() for p in files) == [
        "model/_.json",
        "split/_.json",
        "tiles/a.json",
        "tiles/c.json",
    ]
    for path in files:
        assert path.stat().st_size < 2000 and json.loads(path.read_text())["kind"].endswith("Ref")


def test_missing_upstream_names_the_asset_and_the_fix(tmp_path, instance):
    missing = r"refs/split/_\.json is missing: materialize `split` first.*--select \+split"
    with pytest.raises(FileNotFoundError, match=missing):
        _materialize([tiles, split, model], ["model"], tmp_path, instance)
    with pytest.raises(FileNotFoundError, match=r"materialize `tiles` first \(no partition of it was ever"):
        _materialize([tiles, split, model], ["split", "model"], tmp_path, instance)


def test_optional_upstream_loads_as_none(tmp_path, instance):
    assert _materialize([tiles], None, tmp_path, instance, "b").success
    result = _materialize([tiles, split, model, export], ["split", "export"], tmp_path, instance)
    assert result.success
    assert result.asset_materializations_for_node("export")[0].metadata["model_step"].value == -1


def test_only_references_are_handed_on(tmp_path, instance):
    @dg.asset
    def tensor() -> dg.MaterializeResult:
        return dg.MaterializeResult(value=[1.0, 2.0])

    with pytest.raises(TypeError, match="asset tensor returned a list; assets hand on a Reference"):
        _materialize([tensor], None, tmp_path, instance)


def test_damaged_reference_names_the_file(tmp_path):
    path = write_reference(tmp_path / "refs" / "x" / "_.json", TrainingTilesRef(path="/t.parquet"))
    assert read_reference(path) == TrainingTilesRef.model_validate(
        {k: v for k, v in json.loads(path.read_text()).items() if k != "kind"}
    )
    path.write_text('{"kind": "NoSuchRef", "path": "/t"}')
    with pytest.raises(ValueError, match=r"_\.json: not a readable asset reference .*rematerialize"):
        read_reference(path)
