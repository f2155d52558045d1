"""``federated_gan`` end to end: three tiled demo slides, one held out; the two training slides are two sites on a
real loopback federation. Then the paper's downstream check (``federated_tile_check``) and the ``cgan_federated``
export route run on its generator."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import dagster as dg
import mlflow
import numpy as np
import pandas as pd
import pytest
from factory_helpers import read_ref, resources_for, selecting, tile_every_slide

from assets.export import synthetic_dataset
from assets.federated import federated_gan, federated_tile_check
from assets.slides import training_tiles
from ops.export.dataset import SyntheticSegmentationDataset, SyntheticTileClassDataset
from ops.federated.downstream import ARMS
from ops.slides.demo_slides import DemoSlideSpec, write_demo_slide

pytestmark = pytest.mark.integration

_watch: dict = {"root": None, "opened": []}


def _audit(event: str, args: tuple) -> None:
    """Record every file the test process opens under the watched folder while ``_watch['root']`` is set."""
    root = _watch["root"]
    if root and event == "open" and isinstance(args[0], str) and args[0].startswith(root):
        _watch["opened"].append(args[0])


sys.addaudithook(_audit)


@pytest.fixture()
def three_slide_home(factory_home, slide_a, slide_b):
    """Three tiled slides: with 3 groups, training_tiles holds one out and two train (two sites)."""
    inbox = factory_home / "slides"
    inbox.mkdir()
    shutil.copy(slide_a, inbox / "case_a.svs")
    shutil.copy(slide_b, inbox / "case_b.svs")
    write_demo_slide(DemoSlideSpec("case_c", 3072, 2048, seed=303, tissue_share=0.4), inbox)
    return factory_home, tile_every_slide(factory_home)


@pytest.mark.timeout(900)
def test_federated_gan_trains_across_sites_records_lineage_and_feeds_check_and_export(three_slide_home):
    home, instance = three_slide_home
    resources = resources_for(home)
    assert dg.materialize(**selecting([training_tiles]), instance=instance, resources=resources).success
    split = pd.read_parquet(read_ref(home, "training_tiles").path)
    train_slides = sorted(split.loc[split["split"] == "train", "slide"].unique())
    held_out = sorted(split.loc[split["split"] == "holdout", "slide"].unique())
    assert len(train_slides) == 2 and len(held_out) == 1

    # -- the federation: training slides only, each its own site; the asset never opens a tile store -------------
    config = {"rounds": 2, "min_sites": 2, "local_epochs": 1.0, "batch_size": 8, "round_timeout": 240.0}
    _watch["root"] = str(home / "tiling")
    try:
        result = dg.materialize(
            **selecting([federated_gan]),
            instance=instance,
            resources=resources,
            run_config=dg.RunConfig(ops={"federated_gan": {"config": config}}),
        )
    finally:
        _watch["root"] = None
    assert result.success
    assert not _watch["opened"], f"the asset opened site data itself: {_watch['opened'][:3]}"

    meta = result.asset_materializations_for_node("federated_gan")[0].metadata
    assert meta["rounds"].value == 2 and meta["sites"].value == 2
    assert meta["participants"].value == {"1": train_slides, "2": train_slides}, "held-out slides never join"
    samples = meta["site_samples"].value
    assert set(samples) == set(train_slides) and all(n > 0 for n in samples.values())
    shares = meta["site_class_shares"].value
    assert all(sum(s) == pytest.approx(1.0) for s in shares.values())
    assert meta["samples"].value.startswith("![conditional samples")

    client = mlflow.MlflowClient(f"sqlite:///{home / 'mlflow.db'}")
    run = client.get_run(meta["mlflow_run_id"].value)
    assert run.data.tags["dagster_run_id"] == result.run_id
    assert {"fedavg_d_adv", "sites_replied", f"{train_slides[0]}_num-examples"} <= set(run.data.metrics)
    assert (
        client.get_model_version("histofactory-cgan-federated", meta["model_version"].value).run_id == run.info.run_id
    )
    ref = read_ref(home, "federated_gan")
    assert ref.mlflow_run_id == run.info.run_id and ref.model_version == meta["model_version"].value
    assert Path(ref.path).is_file() and Path(ref.lineage).is_file()

    # -- the downstream check: three arms scored on the held-out slide, in metadata and MLflow --------------------
    check_config = {"steps": 20, "batch_size": 16, "n_generated": 32}
    check = dg.materialize(
        **selecting([federated_tile_check]),
        instance=instance,
        resources=resources,
        run_config=dg.RunConfig(ops={"federated_tile_check": {"config": check_config}}),
    )
    assert check.success
    cmeta = check.asset_materializations_for_node("federated_tile_check")[0].metadata
    for arm in ARMS:
        values = [cmeta[f"{arm}_{k}"].value for k in ("acc", "f1", "recall_0", "recall_1")]
        assert all(0.0 <= v <= 1.0 for v in values), (arm, values)
    assert cmeta["holdout_tiles"].value > 0 and cmeta["train_tiles"].value > 0
    assert cmeta["heldout_slides_seen_by_generator"].value == []
    check_run = client.get_run(cmeta["mlflow_run_id"].value)
    assert check_run.data.tags["dagster_run_id"] == check.run_id
    assert {f"{arm}_f1" for arm in ARMS} <= set(check_run.data.metrics)

    # -- the export route: tiles with their class and lineage, no mask, loadable for classification -------------
    export_config = {"generators": ["cgan_federated"], "batch_size": 8}
    exported = dg.materialize(
        **selecting([synthetic_dataset]),
        instance=instance,
        resources=resources,
        partition_key="000",
        run_config=dg.RunConfig(ops={"synthetic_dataset": {"config": export_config}}),
    )
    assert exported.success
    emeta = exported.asset_materializations_for_node("synthetic_dataset")[0].metadata
    export_dir = Path(read_ref(home, "synthetic_dataset", "000").path)
    manifest = pd.read_parquet(export_dir / "manifest.parquet")
    assert len(manifest) == emeta["kept"].value > 0
    assert manifest["generator"].eq("cgan_federated").all() and manifest["mask"].isna().all()
    assert (manifest["tile_class"].astype(int) == manifest["seed"] % 2).all()
    assert manifest["cgan_mlflow_run"].eq(ref.mlflow_run_id).all()
    assert manifest["cgan_model_version"].eq(ref.model_version).all()
    train_ids = sorted(split.loc[split["split"] == "train", "slide_id"].unique())
    assert manifest["source_slides"].eq(";".join(train_ids)).all()
    assert np.isfinite(manifest["nn_pixel_distance"]).all(), "the memorization check ran on every tile"
    assert "no pixel mask" in (export_dir / "dataset_card.md").read_text()
    tiles = SyntheticTileClassDataset(export_dir)
    image, label = tiles[0]
    assert len(tiles) == len(manifest) and image.shape == (3, 32, 32) and label.item() in (0, 1)
    with pytest.raises(ValueError, match="load them with SyntheticTileClassDataset"):
        SyntheticSegmentationDataset(export_dir, generator="cgan_federated")
