"""The GenSeg route on real tiled slides: training with MLflow lineage, resuming after kill -9 into the same MLflow
run and extending it with continue_training, and export rows that carry the route's lineage and load through the
dataset class."""

from __future__ import annotations

import json

import dagster as dg
import numpy as np
import pandas as pd
import pytest
from factory_helpers import (
    TINY_GATES,
    TINY_GENSEG_MODEL,
    TINY_LDM,
    kill_after_first_checkpoint,
    read_ref,
    resources_for,
    selecting,
)

from assets.diffusion import mask_bank
from assets.export import synthetic_dataset
from assets.genseg import genseg_model
from assets.labelling import tile_annotations
from assets.slides import training_tiles
from ops.export.dataset import SyntheticSegmentationDataset
from ops.genseg.trainer import read_trainer_checkpoint
from resources import MlflowTracking, TorchDevice

pytestmark = pytest.mark.integration

# 2 demo-annotated tiles per training slide (one trains S, one gives the validation loss).
TINY_GENSEG = {
    "tile_annotations": TINY_LDM["tile_annotations"],
    "mask_bank": TINY_LDM["mask_bank"],
    **TINY_GENSEG_MODEL,
    "genseg_model_genseg_follows_masks": TINY_GATES["genseg_model_genseg_follows_masks"],
}


def _run(assets, instance, home, ops, partition=None):
    result = dg.materialize(
        **selecting(assets),
        instance=instance,
        resources={**resources_for(home), "torch_device": TorchDevice(threads=1)},  # 2 threads crawl on shared cores
        run_config=dg.RunConfig(ops=ops),
        partition_key=partition,
    )
    assert result.success
    return result


def test_genseg_trains_logs_and_exports_pairs_with_lineage(tiled_home):
    home, instance = tiled_home
    result = _run([training_tiles, tile_annotations, mask_bank, genseg_model], instance, home, TINY_GENSEG)
    meta = result.asset_materializations_for_node("genseg_model")[0].metadata
    assert meta["step"].value == 8 and meta["resumed_from_step"].value == 0
    assert meta["seg_tiles"].value >= 1 and meta["val_tiles"].value >= 1
    assert 0 <= meta["fidelity"].value <= 1 and np.isfinite(meta["mask_agreement"].value)
    ref = read_ref(home, "genseg_model")
    assert ref.search is True and ref.class_map == "demo" and ref.resolution == 64
    client = MlflowTracking().client()
    run = client.get_run(ref.mlflow_run_id)
    assert run.data.tags["dagster_asset"] == "genseg_model"
    assert {"g_l1", "s_generated", "val_loss", "hypergrad_norm", "final_fidelity"} <= set(run.data.metrics)
    arch = [k for k in run.data.metrics if k.startswith("arch/mid/")]
    assert len(arch) == 4 and len(client.get_metric_history(ref.mlflow_run_id, "arch/mid/skip")) == 8
    assert client.get_model_version("histofactory-genseg", ref.model_version).run_id == run.info.run_id

    export = {"synthetic_dataset": {"config": {"batch_size": 6, "generators": ["genseg"], "stand_in_fidelity": True}}}
    _run([synthetic_dataset], instance, home, export, partition="000")
    folder = home / "export" / read_ref(home, "synthetic_dataset", "000").content_hash
    manifest = pd.read_parquet(folder / "manifest.parquet")
    assert len(manifest) >= 1 and (manifest["generator"] == "genseg").all()
    assert (manifest["genseg_mlflow_run"] == ref.mlflow_run_id).all()
    assert (manifest["genseg_model_version"] == ref.model_version).all()
    assert (manifest["annotation_version"] == ref.annotation_version).all()
    assert (manifest["ldm_mlflow_run"] == "").all() and manifest["source_slides"].str.startswith("sl-").all()
    assert manifest["fidelity"].between(0, 1).all() and manifest["sample_id"].str.startswith("genseg_").all()
    assert "**genseg** (GenSeg recipe)" in (folder / "dataset_card.md").read_text()
    assert "genseg" in json.loads((folder / "label_scores.json").read_text())["routes"]
    with np.load(folder / "batches" / "000" / "genseg_latents.npz") as z:
        assert z["seeds"].shape == (6,) and z["transforms"].shape == (6, 2, 3)
    ds = SyntheticSegmentationDataset(folder, generator="genseg")
    x, y = ds[0]
    assert len(ds) == len(manifest) and x.shape == (3, 64, 64) and y.shape == (64, 64) and int(y.max()) < 6


def test_killed_genseg_training_resumes_into_the_same_mlflow_run(tiled_home, tmp_path):
    home, instance = tiled_home
    _run(
        [training_tiles, tile_annotations, mask_bank],
        instance,
        home,
        {k: TINY_GENSEG[k] for k in ("tile_annotations", "mask_bank")},
    )
    gate = {"genseg_model_genseg_follows_masks": TINY_GENSEG["genseg_model_genseg_follows_masks"]}
    cfg = {**TINY_GENSEG["genseg_model"]["config"], "kimg": 0.08, "checkpoint_every": 2}  # 40 steps
    checkpoint = kill_after_first_checkpoint(
        home, "genseg_model", {"ops": {"genseg_model": {"config": cfg}, **gate}}, "genseg/*/checkpoint.pt", tmp_path
    )
    state = json.loads((checkpoint.parent / "state.json").read_text())
    step_at_kill = int(read_trainer_checkpoint(checkpoint)["step"])
    assert 0 < step_at_kill < 40

    meta = (
        _run([genseg_model], instance, home, {"genseg_model": {"config": cfg}, **gate})
        .asset_materializations_for_node("genseg_model")[0]
        .metadata
    )
    assert meta["resumed_from_step"].value == step_at_kill and meta["step"].value == 40
    assert meta["mlflow_run_id"].value == state["mlflow_run_id"], "the resumed run continues the same MLflow run"

    longer = {**cfg, "kimg": 0.088, "continue_training": True}  # 4 more steps on the same run
    meta = (
        _run([genseg_model], instance, home, {"genseg_model": {"config": longer}, **gate})
        .asset_materializations_for_node("genseg_model")[0]
        .metadata
    )
    assert meta["resumed_from_step"].value == 40 and meta["step"].value == 44
    assert meta["mlflow_run_id"].value == state["mlflow_run_id"], "continue_training extends the same MLflow run"
    record = json.loads(checkpoint.with_suffix(".json").read_text())
    assert record["step"] == 44 and [m["to_step"] for m in record["materializations"]][-2:] == [40, 44]
    assert "--select genseg_model" in record["materializations"][-1]["command"]
