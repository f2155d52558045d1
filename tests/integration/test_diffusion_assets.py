"""The LDM route's assets on real tiled slides: slide GeoJSON onto tiles (and its errors), mask bank, autoencoder,
LDM with MLflow lineage, resuming from the checkpoint, continuing a finished run, and DISC's fine-tune.
"""

from __future__ import annotations

import json
from pathlib import Path

import dagster as dg
import numpy as np
import pandas as pd
import pytest
from factory_helpers import TINY_LDM, kill_after_first_checkpoint, read_ref, resources_for, selecting, tiny_gates

from assets.diffusion import autoencoder, ldm_model, mask_bank
from assets.evaluation import real_annotations
from assets.labelling import tile_annotations
from assets.slides import training_tiles
from ops.diffusion.denoiser import read_ldm_checkpoint
from ops.evaluation.real_split import RealPairs
from ops.gan.trainer import CheckpointError
from ops.labelling.class_maps import AnnotationError
from ops.labelling.slide_annotations import open_mask_array
from resources import MlflowTracking

pytestmark = pytest.mark.integration


def _run(assets, instance, home, ops):
    result = dg.materialize(
        **selecting(assets),
        instance=instance,
        resources=resources_for(home),
        run_config=dg.RunConfig(ops={**tiny_gates(assets), **ops}),
    )
    assert result.success
    return result


def _square(x0: float, y0: float, size: float, name: str) -> dict:
    ring = [[x0, y0], [x0 + size, y0], [x0 + size, y0 + size], [x0, y0 + size], [x0, y0]]
    return {
        "type": "Feature",
        "geometry": {"type": "Polygon", "coordinates": [ring]},
        "properties": {"objectType": "annotation", "classification": {"name": name}},
    }


def test_slide_geojson_becomes_tile_masks_and_bad_files_are_named(tiled_home):
    home, instance = tiled_home
    _run([training_tiles], instance, home, {})
    tiles = pd.read_parquet(home / "training" / "tiles.parquet")
    inbox = home / "annotations" / "slides"
    plain = {"tile_annotations": {"config": {"demo_annotator": False}}}
    with pytest.raises(ValueError, match=r"no kept tile is annotated.*annotations/slides"):
        _run([tile_annotations], instance, home, plain)

    # A QuPath export drawn on the slide: stroma over exactly one kept tile, a nucleus inside it (painted on top).
    tile = tiles[tiles["split"] == "train"].iloc[0]
    x, y, size = int(tile["x"]), int(tile["y"]), int(tile["tile_size"])
    doc = {
        "type": "FeatureCollection",
        "features": [_square(x, y, size, "stroma"), _square(x + 100, y + 50, 100, "nucleus interior")],
    }
    inbox.mkdir(parents=True, exist_ok=True)
    (inbox / f"{tile['slide']}.geojson").write_text(json.dumps(doc))
    meta = (
        _run([tile_annotations], instance, home, plain).asset_materializations_for_node("tile_annotations")[0].metadata
    )
    assert meta["annotated_tiles"].value == 1
    table = pd.read_parquet(home / "annotations" / "tiles" / "tiles.parquet")
    assert (table.iloc[0]["x"], table.iloc[0]["y"], table.iloc[0]["slide"]) == (x, y, tile["slide"])
    mask = np.asarray(open_mask_array(table.iloc[0]["mask_store"])[int(table.iloc[0]["mask_index"])])
    expected = np.full((size, size), 4, np.uint8)  # stroma
    expected[50:150, 100:200] = 1  # nucleus interior
    np.testing.assert_array_equal(mask, expected)

    # Expert annotations of a held-out slide become the validation and test pairs (disjoint tiles).
    held = tiles[tiles["split"] == "holdout"].iloc[:2]
    (inbox / f"{held.iloc[0]['slide']}.geojson").write_text(
        json.dumps(
            {
                "type": "FeatureCollection",
                "features": [_square(int(r.x), int(r.y), size, "dab-positive region") for r in held.itertuples()],
            }
        )
    )
    _run([tile_annotations], instance, home, plain)
    real = (  # no gan_model needed: the crop resolution is real_annotations' own config
        _run(
            [real_annotations],
            instance,
            home,
            {"real_annotations": {"config": {"source": "slide_annotations", "crops_per_tile": 1}}},
        )
        .asset_materializations_for_node("real_annotations")[0]
        .metadata
    )
    assert real["source"].value == "slide_annotations"
    assert (real["train_tiles"].value, real["val_tiles"].value, real["test_tiles"].value) == (1, 1, 1)
    pairs = RealPairs.load(home / "annotations" / "real" / "pairs.npz")
    assert pairs.images.shape == (3, 64, 64, 3)
    assert (pairs.masks[pairs.parts != "train"] == 3).all(), "held-out crops carry the held-out tiles' label"
    held = held.iloc[0]
    (inbox / f"{held['slide']}.geojson").unlink()

    # Drawn on another (bigger) image, or with a class the map does not know: the error names the file and the fix.
    (inbox / f"{tile['slide']}.geojson").write_text(
        json.dumps({"type": "FeatureCollection", "features": [_square(10**7, 10**7, 500, "stroma")]})
    )
    with pytest.raises(AnnotationError, match=rf"{tile['slide']}\.geojson.*outside"):
        _run([tile_annotations], instance, home, plain)
    (inbox / f"{tile['slide']}.geojson").write_text(
        json.dumps({"type": "FeatureCollection", "features": [_square(x, y, 64, "strom")]})
    )
    with pytest.raises(AnnotationError, match=r"unknown class 'strom' \(did you mean 'stroma'\?\)"):
        _run([tile_annotations], instance, home, plain)


def test_ldm_chain_logs_lineage_resumes_continues_and_distills(tiled_home):
    home, instance = tiled_home
    _run([training_tiles], instance, home, {})
    chain = [tile_annotations, mask_bank, autoencoder, ldm_model]
    result = _run(chain, instance, home, TINY_LDM)
    ae_meta = result.asset_materializations_for_node("autoencoder")[0].metadata
    assert ae_meta["latent_shape"].value == [4, 16, 16] and ae_meta["latent_scale"].value > 0
    assert ae_meta["step"].value == 4
    meta = result.asset_materializations_for_node("ldm_model")[0].metadata
    assert meta["step"].value == 4 and meta["resumed_from_step"].value == 0
    assert 0 <= meta["mask_accuracy"].value <= 1 and np.isfinite(meta["mask_agreement"].value)
    ldm = read_ref(home, "ldm_model")
    assert ldm.conditioning == "concat" and ldm.class_map == "demo"
    assert ldm.autoencoder == ae_meta["path"].value
    client = MlflowTracking().client()
    run = client.get_run(ldm.mlflow_run_id)
    assert run.data.tags["dagster_asset"] == "ldm_model" and "loss" in run.data.metrics
    assert "final_mask_agreement" in run.data.metrics
    assert client.get_model_version("histofactory-mask-ldm", ldm.model_version).run_id == run.info.run_id
    bank_meta = result.asset_materializations_for_node("mask_bank")[0].metadata
    assert bank_meta["masks"].value == 32 and sum(bank_meta["shapes_per_class"].value.values()) > 0

    # The same config again finds the finished checkpoint: no retraining, same MLflow run.
    again = _run([ldm_model], instance, home, {"ldm_model": TINY_LDM["ldm_model"]})
    meta2 = again.asset_materializations_for_node("ldm_model")[0].metadata
    assert meta2["resumed_from_step"].value == 4 == meta2["step"].value
    assert meta2["mlflow_run_id"].value == ldm.mlflow_run_id

    # continue_training with a larger kimg extends that run: same checkpoint file and MLflow run, more steps.
    cfg = TINY_LDM["ldm_model"]["config"]
    longer = {"ldm_model": {"config": {**cfg, "kimg": 0.064, "continue_training": True}}}
    meta3 = _run([ldm_model], instance, home, longer).asset_materializations_for_node("ldm_model")[0].metadata
    after = read_ref(home, "ldm_model")
    assert (meta3["resumed_from_step"].value, meta3["step"].value, meta3["images_seen"].value) == (4, 8, 64)
    assert after.mlflow_run_id == ldm.mlflow_run_id and after.path == ldm.path, "same run, same checkpoint"
    assert int(read_ldm_checkpoint(after.path)["step"]) == 8 and meta3["unlabelled_train_tiles"].value > 0
    provenance = json.loads(Path(after.path).with_suffix(".json").read_text())
    assert [h["to_step"] for h in provenance["materializations"]] == [4, 4, 8] and provenance["images_seen"] == 64
    assert "--select ldm_model" in provenance["materializations"][2]["command"] and provenance["machine"]
    assert client.get_run(ldm.mlflow_run_id).data.tags["kimg"] == "0.064"

    # SD-DISC-CoTrain: 4 base steps, separated latents of 2 seeds stored, 2 fine-tuning steps on fused latents.
    disc = {**cfg, "distill": "disc_cotrain", "distill_seeds": 2, "distill_steps": 2, "distill_ddim_steps": 2}
    meta4 = (
        _run([ldm_model], instance, home, {"ldm_model": {"config": disc}})
        .asset_materializations_for_node("ldm_model")[0]
        .metadata
    )
    assert (meta4["step"].value, meta4["images_seen"].value, meta4["disc_seeds"].value) == (6, 64, 2)
    assert np.isfinite(meta4["disc_loss"].value) and read_ref(home, "ldm_model").mlflow_run_id != ldm.mlflow_run_id
    with np.load(Path(read_ref(home, "ldm_model").path).parent / "disc_latents.npz") as f:
        assert f["latents"].shape == (2, 6, 4, 16, 16)
    with pytest.raises(ValueError, match="has started its DISC fine-tune"):
        _run([ldm_model], instance, home, {"ldm_model": {"config": {**disc, "kimg": 0.064, "continue_training": True}}})

    # A missing or mismatched pretrained file is refused with the fix (a fresh run key, so no checkpoint to resume).
    with pytest.raises(CheckpointError, match=r"nothing\.pt does not exist; fix the path or unset it"):
        _run([ldm_model], instance, home, {"ldm_model": {"config": {**cfg, "pretrained": str(home / "nothing.pt")}}})
    with pytest.raises(CheckpointError, match=r"checkpoint\.pt holds a LdmConfig.*set from_scratch: true"):
        _run(
            [ldm_model],
            instance,
            home,
            {"ldm_model": {"config": {**cfg, "conditioning": "cross_attention", "pretrained": ldm.path}}},
        )

    # A bank at another resolution than the autoencoder's is refused with the fix.
    _run([mask_bank], instance, home, {"mask_bank": {"config": {"resolution": 32, "crops": 8}}})
    with pytest.raises(ValueError, match="set mask_bank's resolution to 64"):
        _run([ldm_model], instance, home, {"ldm_model": TINY_LDM["ldm_model"]})


def test_killed_ldm_training_resumes_from_its_checkpoint(tiled_home, tmp_path):
    home, instance = tiled_home
    _run(
        [training_tiles, tile_annotations, mask_bank, autoencoder],
        instance,
        home,
        {k: TINY_LDM[k] for k in ("tile_annotations", "mask_bank", "autoencoder")},
    )
    config = {"ops": {"ldm_model": {"config": {**TINY_LDM["ldm_model"]["config"], "kimg": 0.32}}}}  # 40 steps
    checkpoint = kill_after_first_checkpoint(home, "ldm_model", config, "ldm/model/*/checkpoint.pt", tmp_path)
    state = json.loads((checkpoint.parent / "state.json").read_text())
    step_at_kill = int(read_ldm_checkpoint(checkpoint)["step"])
    assert 0 < step_at_kill < 40

    result = _run([ldm_model], instance, home, config["ops"])
    meta = result.asset_materializations_for_node("ldm_model")[0].metadata
    assert meta["resumed_from_step"].value == step_at_kill and meta["step"].value == 40
    assert meta["mlflow_run_id"].value == state["mlflow_run_id"], "the resumed run continues the same MLflow run"
