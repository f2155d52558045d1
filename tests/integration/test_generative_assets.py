"""GAN assets end to end: split, training with MLflow, kill + resume, continue_training, sampling into zarr."""

from __future__ import annotations

import json

import dagster as dg
import mlflow
import numpy as np
import pandas as pd
import pytest
import zarr
from factory_helpers import TINY_GAN as TINY
from factory_helpers import kill_after_first_checkpoint, read_ref, selecting, tiny_gates
from factory_helpers import resources_for as _resources

from assets.gan import gan_model, generated_samples
from assets.slides import training_tiles
from ops.gan.appearance_match import matched_seeds, reference_histograms
from ops.gan.sampling import generate
from ops.gan.trainer import load_generator, read_checkpoint

pytestmark = pytest.mark.integration


def _config(**gan) -> dg.RunConfig:
    return dg.RunConfig(
        ops={
            "gan_model": {"config": {**TINY, **gan}},
            "generated_samples": {"config": {"n": 12, "export_for_annotation": [1, 5]}},
            **tiny_gates([gan_model]),
        }
    )


def test_split_train_sample_and_lineage(tiled_home):
    home, instance = tiled_home
    result = dg.materialize(
        **selecting([training_tiles, gan_model, generated_samples]),
        instance=instance,
        resources=_resources(home),
        run_config=_config(),
    )
    assert result.success
    split = pd.read_parquet(home / "training" / "tiles.parquet")
    by_slide = split.groupby("slide")["split"].agg(set)
    assert all(len(s) == 1 for s in by_slide), "a slide is never split between train and hold-out"
    assert set(split["split"]) == {"train", "holdout"}

    meta = result.asset_materializations_for_node("gan_model")[0].metadata
    run_id = meta["mlflow_run_id"].value
    assert meta["step"].value == 12 and meta["resumed_from_step"].value == 0
    assert meta["sample_grid"].value.startswith("![generated samples](data:image/png;base64,")
    assert meta["untrained_floor_ratio"].value > 1

    client = mlflow.MlflowClient(f"sqlite:///{home / 'mlflow.db'}")
    run = client.get_run(run_id)
    assert run.data.tags["dagster_run_id"] == result.run_id
    assert {"loss_G", "loss_D", "ada_p", "swd_avg", "swd_floor_avg", "swd_untrained_avg"} <= set(run.data.metrics)
    assert [m.step for m in client.get_metric_history(run_id, "loss_G")][-1] == 12
    artifacts = {a.path for a in client.list_artifacts(run_id, "checkpoint")}
    assert {"checkpoint/checkpoint.pt", "checkpoint/gan_config.json"} <= artifacts
    versions = client.search_model_versions("name='histofactory-stylegan2'")
    assert [v.run_id for v in versions] == [run_id]

    samples = zarr.open_group(str(home / "samples" / "samples.zarr"), mode="r")
    images, seeds, w = samples["images"][:], samples["seeds"][:], samples["w"][:]
    assert images.shape == (12, 64, 64, 3) and images.dtype == np.uint8
    assert list(seeds) == list(range(12))
    # Any sample regenerates bit for bit from its stored seed (and its stored w).
    gan = read_ref(home, "gan_model")
    assert (gan.mlflow_run_id, gan.step, gan.resolution) == (run_id, 12, 64)
    G = load_generator(gan.path)
    z, w_again, again = generate(G, seeds[[3]], psi=samples.attrs["psi"])
    np.testing.assert_array_equal(again[0], images[3])
    np.testing.assert_array_equal(w_again[0], w[3])
    assert sorted(p.name for p in (home / "samples" / "for_annotation").iterdir()) == [
        "sample_00001.png",
        "sample_00005.png",
    ]

    # Colour-matched draw: k * n candidates, the n matching training crops kept, as the export draws its images.
    matched = dg.materialize(
        **selecting([generated_samples]),
        instance=instance,
        resources=_resources(home),
        run_config=dg.RunConfig(ops={"generated_samples": {"config": {"n": 8, "match_pool": 3}}}),
    )
    assert matched.success
    samples = zarr.open_group(str(home / "samples" / "samples.zarr"), mode="r")
    seeds, images = samples["seeds"][:], samples["images"][:]
    reference = reference_histograms(split, 64)
    np.testing.assert_array_equal(seeds, matched_seeds(G, np.arange(24), 0.7, reference, 8, seed=0))
    assert len(set(seeds.tolist())) == 8 and seeds.max() >= 8, "kept from 24 candidates, not the first 8"
    assert samples.attrs["match_pool"] == 3 and images.shape == (8, 64, 64, 3)
    np.testing.assert_array_equal(generate(G, seeds[[5]], psi=0.7)[2][0], images[5])
    meta = matched.asset_materializations_for_node("generated_samples")[0].metadata
    assert meta["match_pool"].value == 3


def test_interrupted_training_resumes_from_checkpoint(tiled_home, tmp_path):
    home, instance = tiled_home
    assert dg.materialize(**selecting([training_tiles]), instance=instance, resources=_resources(home)).success
    config = {"ops": {"gan_model": {"config": {**TINY, "kimg": 0.2}}}}
    checkpoint = kill_after_first_checkpoint(home, "gan_model", config, "gan/*/checkpoint.pt", tmp_path)
    state = json.loads((checkpoint.parent / "state.json").read_text())
    step_at_kill = int(read_checkpoint(checkpoint)["step"])
    assert 0 < step_at_kill < 50

    result = dg.materialize(
        **selecting([gan_model]),
        instance=instance,
        resources=_resources(home),
        run_config=dg.RunConfig(ops={**config["ops"], **tiny_gates([gan_model])}),
    )
    assert result.success
    meta = result.asset_materializations_for_node("gan_model")[0].metadata
    assert meta["resumed_from_step"].value == step_at_kill
    assert meta["step"].value == 50
    assert meta["mlflow_run_id"].value == state["mlflow_run_id"], "the resumed run continues the same MLflow run"

    longer = {"gan_model": {"config": {**TINY, "kimg": 0.216, "continue_training": True}}, **tiny_gates([gan_model])}
    result = dg.materialize(
        **selecting([gan_model]), instance=instance, resources=_resources(home), run_config=dg.RunConfig(ops=longer)
    )
    meta = result.asset_materializations_for_node("gan_model")[0].metadata
    assert result.success and (meta["resumed_from_step"].value, meta["step"].value) == (50, 54)
    assert meta["mlflow_run_id"].value == state["mlflow_run_id"], "continue_training extends the same MLflow run"
