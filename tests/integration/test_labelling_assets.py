"""Annotation import, feature extraction, classifier training and evaluation, end to end on tiny configs."""

from __future__ import annotations

import dagster as dg
import mlflow
import numpy as np
import pandas as pd
import pytest
import zarr
from factory_helpers import TINY_CHAIN, read_ref, resources_for, selecting, tiny_gates

from assets.gan import gan_model, generated_samples
from assets.labelling import annotations, classifier_eval, generated_features, pixel_classifier
from assets.slides import training_tiles
from ops.labelling.class_maps import AnnotationError

pytestmark = pytest.mark.integration

CHAIN = [
    training_tiles,
    gan_model,
    generated_samples,
    annotations,
    generated_features,
    pixel_classifier,
    classifier_eval,
]
CONFIG = {**TINY_CHAIN, **tiny_gates(CHAIN)}


def test_labelling_chain(tiled_home):
    home, instance = tiled_home
    result = dg.materialize(
        **selecting(CHAIN), instance=instance, resources=resources_for(home), run_config=dg.RunConfig(ops=CONFIG)
    )
    assert result.success

    inbox = sorted(p.suffix for p in (home / "annotations" / "inbox").iterdir())
    assert inbox.count(".png") == 6 and inbox.count(".geojson") == 6, "demo annotator writes both formats"
    index = pd.read_parquet(home / "annotations" / "current" / "index.parquet")
    assert index["split"].value_counts().to_dict() == {"train": 6, "test": 4, "val": 2}
    ann_meta = result.asset_materializations_for_node("annotations")[0].metadata
    version = ann_meta["annotation_version"].value
    assert len(version) == 16

    feats = zarr.open_group(str(home / "features" / "native.zarr"), mode="r")
    shapes = sorted((feats[k].shape for k in feats.array_keys()), key=lambda s: s[2])
    assert [s[2] for s in shapes] == [16, 32, 64], "the last 3 blocks, each at its native resolution"
    assert all(feats[k].dtype == np.float16 for k in feats.array_keys())
    fmeta = result.asset_materializations_for_node("generated_features")[0].metadata
    assert fmeta["disk_ratio_vs_upsampled_fp32"].value > 2

    cls_meta = result.asset_materializations_for_node("pixel_classifier")[0].metadata
    assert cls_meta["annotation_version"].value == version, "lineage: which annotations trained the classifier"
    eval_meta = result.asset_materializations_for_node("classifier_eval")[0].metadata
    assert 0 <= eval_meta["mean_dice"].value <= 1
    assert eval_meta["confusion_matrix"].value.startswith("![confusion matrix](data:image/png;base64,")
    run = mlflow.MlflowClient(f"sqlite:///{home / 'mlflow.db'}").get_run(cls_meta["mlflow_run_id"].value)
    assert run.data.tags["annotation_version"] == version
    assert "test_mean_dice" in run.data.metrics and "train_loss" in run.data.metrics
    classifier = read_ref(home, "pixel_classifier")
    assert classifier.content_hash == version and classifier.class_map == "demo"
    assert classifier.model_version == cls_meta["model_version"].value.split("/")[1], "registered as a model"


def test_annotation_for_unknown_image_is_rejected(tiled_home):
    home, instance = tiled_home
    ok = dg.materialize(
        **selecting(CHAIN[:3]),
        instance=instance,
        resources=resources_for(home),
        run_config=dg.RunConfig(ops={k: CONFIG[k] for k in ("gan_model", "generated_samples", *tiny_gates(CHAIN[:3]))}),
    )
    assert ok.success
    inbox = home / "annotations" / "inbox"
    inbox.mkdir(parents=True)
    (inbox / "sample_00999.png").write_bytes(b"not even a png")
    with pytest.raises(AnnotationError, match=r"sample_00999\.png.*not among the 16 images"):
        dg.materialize(
            **selecting([annotations]),
            instance=instance,
            resources=resources_for(home),
            run_config=dg.RunConfig(ops={"annotations": CONFIG["annotations"]}),
        )
