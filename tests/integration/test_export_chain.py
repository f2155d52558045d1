"""The whole factory on tiny configs: export contents, lineage back to slides, no patient data in the export,
the PyTorch loader, the downstream proof of value, and staleness after a complete run.
"""

from __future__ import annotations

import json
import shutil

import dagster as dg
import numpy as np
import pandas as pd
import pytest
import torch
from factory_helpers import (
    TINY_CHAIN,
    TINY_GATES,
    TINY_GENSEG_MODEL,
    TINY_LDM,
    resources_for,
    selecting,
    tile_every_slide,
)
from PIL import Image

from assets.diffusion import autoencoder, ldm_model, mask_bank
from assets.evaluation import downstream_eval, label_judge, real_annotations, synthetic_helps
from assets.export import label_agreement_floor, synthetic_dataset
from assets.gan import gan_model, generated_samples
from assets.genseg import genseg_model
from assets.labelling import annotations, classifier_eval, generated_features, pixel_classifier, tile_annotations
from assets.slides import training_tiles
from ops.diffusion.mask_bank import MaskBank
from ops.export.dataset import SyntheticSegmentationDataset
from ops.slides.demo_slides import DemoSlideSpec, write_demo_slide
from ops.slides.registry import SlideRegistry
from pipelines import defs
from pipelines.backfill import stale_plan
from pipelines.schedules import weekly_retraining

pytestmark = pytest.mark.integration

PATIENT_FILE = "DOE_JOHN_1962-03-14_MRN12345678"
PROPERTIES = {
    "PatientName": "DOE^JOHN",
    "MRN": "MRN12345678",
    "ScanScope ID": "SS-HOSPITAL-0042",
    "Filename": PATIENT_FILE,
    "Date": "03/14/2024",
}
CHAIN = [
    training_tiles,
    gan_model,
    generated_samples,
    annotations,
    generated_features,
    pixel_classifier,
    classifier_eval,
    tile_annotations,
    mask_bank,
    autoencoder,
    ldm_model,
    genseg_model,
    real_annotations,
    label_judge,
]
CONFIG = {
    **TINY_CHAIN,
    **TINY_LDM,
    **TINY_GENSEG_MODEL,
    **TINY_GATES,
    "real_annotations": {"config": {"crops_per_tile": 2, "heldout_tiles": 6}},
    "label_judge": {"config": {"steps": 4, "base_channels": 4}},
}
EXPORT = {
    "synthetic_dataset": {
        "config": {
            "batch_size": 10,
            "memorization_bank": 200,
            "generators": ["stylegan2", "ldm"],
            "ldm_steps": 2,
            "stand_in_fidelity": True,
        }
    }
}
DOWNSTREAM = {
    "downstream_eval": {
        "config": {
            "budgets": [2],
            "seeds": [0, 1],
            "lambdas": [0.3, 0.5],
            "real_passes": 1,
            "min_steps": 2,
            "base_channels": 4,
            "synthetic_max": 5,
            "per_budget": True,
            "gan_epochs": 1,
            "ldm_pretrain_steps": 2,
            "ldm_finetune_steps": 2,
            "ldm_batch": 4,
            "unlabelled_crops": 16,
        }
    },
}


@pytest.fixture()
def patient_home(factory_home, slide_b, tmp_path):
    """A patient-like slide (identifying name, properties and label image) plus a second slide, tiled."""
    spec = DemoSlideSpec(
        PATIENT_FILE,
        3072,
        3072,
        seed=303,
        tissue_share=0.4,
        properties=PROPERTIES,
        label_text=f"{PATIENT_FILE} DOE^JOHN",
    )
    inbox = factory_home / "slides"
    write_demo_slide(spec, inbox)
    shutil.copy(slide_b, inbox / "case_b.svs")
    return factory_home, tile_every_slide(factory_home)


def _run(assets, instance, home, ops, partition_key=None):
    result = dg.materialize(
        **selecting(assets),
        instance=instance,
        resources=resources_for(home),
        run_config=dg.RunConfig(ops=ops),
        partition_key=partition_key,
    )
    assert result.success
    return result


def test_whole_chain_export_lineage_privacy_and_value(patient_home):
    home, instance = patient_home
    _run(CHAIN, instance, home, CONFIG)
    for batch in ("000", "001"):
        result = _run([synthetic_dataset, label_agreement_floor], instance, home, EXPORT, partition_key=batch)
    meta = result.asset_materializations_for_node("synthetic_dataset")[0].metadata
    version = meta["export_version"].value
    export = home / "export" / version

    # -- export contents ------------------------------------------------------------------------------------------
    manifest = pd.read_parquet(export / "manifest.parquet")
    assert len(manifest) == meta["export_samples_total"].value == len(pd.read_csv(export / "manifest.csv"))
    assert sorted(manifest["batch"].unique()) == [0, 1]
    gan, ldm = (manifest[manifest["generator"] == g] for g in ("stylegan2", "ldm"))
    assert (gan.groupby("batch").size() <= 9).all(), "the most uncertain 10% of each GAN batch is dropped"
    dropped = pd.concat([pd.read_parquet(p) for p in export.glob("batches/*/dropped.parquet")])
    assert len(dropped) + len(manifest) == 40, "each generator makes batch_size samples per batch"
    made = pd.concat([manifest, dropped])
    assert set(ldm["seed"]) == set(range(1_000_000, 1_000_020)) - set(dropped[dropped["generator"] == "ldm"]["seed"])
    for batch, rows in made[made["generator"] == "stylegan2"].groupby("batch"):  # 10 colour-matched of 40 candidates
        candidates = set(range(1_000_000 + 40 * batch, 1_000_000 + 40 * (batch + 1)))
        assert rows["seed"].nunique() == len(rows) == 10 and set(rows["seed"]) <= candidates
    for row in manifest.itertuples():
        image, mask = Image.open(export / row.image), Image.open(export / row.mask)
        assert image.size == mask.size == (64, 64) and image.mode == "RGB" and mask.mode == "P"
    fractions = manifest.filter(like="frac_").to_numpy()
    np.testing.assert_allclose(fractions.sum(axis=1), 1.0, atol=1e-5)
    # GAN masks leave the quarter of their pixels the ensemble disagrees on most unlabelled; LDM masks label all.
    np.testing.assert_allclose(gan["frac_unlabelled"], 0.25, atol=1 / 4096)
    assert (ldm["frac_unlabelled"] == 0).all()
    gan_mask = np.asarray(Image.open(export / gan["mask"].iloc[0]))
    assert (gan_mask == 255).sum() == 1024 and gan_mask[gan_mask != 255].max() < 6
    assert {
        "uncertainty",
        "nn_pixel_distance",
        "nn_feature_distance",
        "mpp",
        "gan_mlflow_run",
        "classifier_mlflow_run",
        "annotation_version",
        "torch_version",
        "latents",
    } <= set(manifest.columns)
    # -- label scores: fidelity against the stand-in and agreement with the judge, per pair and per route ----------
    for column in ("fidelity", "judge_agreement", "fidelity_stroma", "judge_stroma"):
        values = manifest[column].dropna()
        assert len(values) and ((values >= 0) & (values <= 1)).all(), column
    scores = json.loads((export / "label_scores.json").read_text())
    assert set(scores["routes"]) == {"stylegan2", "ldm"} and 0 <= scores["judge_dice_held_out"] <= 1
    for route in ("stylegan2", "ldm"):
        assert {"fidelity", "judge_agreement", "fidelity/stroma"} <= set(scores["routes"][route])
        assert meta[f"fidelity_{route}"].value == pytest.approx(scores["routes"][route]["fidelity"])
    assert "judge_fidelity_correlation" in scores and "## Label scores" in (export / "dataset_card.md").read_text()
    # fidelity on every pixel: the GAN masks' unlabelled pixels count as misses, the LDM masks have none
    gan, ldm = (manifest[manifest["generator"] == r] for r in ("stylegan2", "ldm"))
    assert (gan["frac_unlabelled"] > 0).all() and (ldm["frac_unlabelled"] == 0).all()
    assert (gan["fidelity_all_pixels"] < gan["fidelity"]).all()
    np.testing.assert_allclose(ldm["fidelity_all_pixels"], ldm["fidelity"], rtol=1e-6)
    for route, rows in (("stylegan2", gan), ("ldm", ldm)):
        whole = scores["routes"][route]["fidelity_all_pixels"]
        assert whole == pytest.approx(rows["fidelity_all_pixels"].mean(), rel=1e-5)
        assert meta[f"fidelity_all_pixels_{route}"].value == pytest.approx(whole)
    card = (export / "dataset_card.md").read_text().splitlines()
    gan_line, ldm_line = (next(x for x in card if x.startswith(f"- {r}: mean fidelity ")) for r in ("stylegan2", "ldm"))
    assert "counted as misses" in gan_line and "counted as misses" not in ldm_line, "only where pixels are unlabelled"
    assert not dropped["low_agreement"].any(), "min_agreement 0 drops nothing"
    evaluations = {c.check_name: c for c in result.get_asset_check_evaluations()}
    assert set(evaluations) == {"near_copies_rare", "label_agreement_floor"}, "the export's gates run with it"
    assert "fidelity_ldm" in evaluations["label_agreement_floor"].metadata
    assert evaluations["near_copies_rare"].passed and "near_copy_share" in evaluations["near_copies_rare"].metadata

    latents = np.load(export / "batches" / "000" / "latents.npz")
    assert latents["w"].shape[0] == 10 and latents["z"].shape == (10, 128)

    # -- LDM pairs: masks from the bank (reproducible from the seed), no uncertainty, their own lineage --------------
    assert len(ldm) >= 15 and ldm["sample_id"].str.startswith("ldm_").all()
    assert ldm["uncertainty"].isna().all()
    assert (ldm["ldm_mlflow_run"] != "").all() and (ldm["gan_mlflow_run"] == "").all()
    ldm_latents = np.load(export / "batches" / "000" / "ldm_latents.npz")
    assert ldm_latents["latents"].shape == (10, 4, 16, 16) and list(ldm_latents["seeds"]) == list(
        range(1_000_000, 1_000_010)
    )
    bank = MaskBank.load(home / "ldm" / "mask_bank.npz")
    row = ldm.iloc[0]
    np.testing.assert_array_equal(np.asarray(Image.open(export / row["mask"])), bank.sample([row["seed"]])[0])
    assert "**ldm** (DISC/GenSeg recipe)" in (export / "dataset_card.md").read_text()
    assert (export / "dataset_card.md").read_text().startswith("# Synthetic histopathology")

    # -- lineage back to the source slides (opaque ids only) --------------------------------------------------------
    registry = SlideRegistry(home / "registry" / "slides.json")
    ids = set(manifest["source_slides"].iloc[0].split(";"))
    assert ids and ids <= {e.slide_id for e in registry.entries.values()}

    # -- no patient data: scan every exported byte ---------------------------------------------------------------
    needles = {
        PATIENT_FILE,
        PATIENT_FILE.lower(),
        "DOE^JOHN",
        "MRN12345678",
        "SS-HOSPITAL-0042",
        "Aperio",
        "case_b",
        str(home),
    }
    for path in export.rglob("*"):
        if path.is_file():
            data = path.read_bytes()
            for needle in needles:
                assert needle.encode() not in data, f"{needle!r} leaked into {path.relative_to(export)}"

    # -- PyTorch loading, with worker processes ---------------------------------------------------------------------
    assert len(SyntheticSegmentationDataset(export, generator="ldm")) == len(ldm)
    with pytest.raises(ValueError, match="no pairs of generator 'vae'"):
        SyntheticSegmentationDataset(export, generator="vae")
    dataset = SyntheticSegmentationDataset(export)
    loader = torch.utils.data.DataLoader(dataset, batch_size=4, num_workers=2)
    x, y = next(iter(loader))
    assert x.shape == (4, 3, 64, 64) and x.dtype == torch.float32 and 0 <= x.min() <= x.max() <= 1
    assert y.shape == (4, 64, 64) and y.dtype == torch.int64

    # -- a changed setting makes a new version; the old one is kept -----------------------------------------------
    other = _run(
        [synthetic_dataset],
        instance,
        home,
        {"synthetic_dataset": {"config": {**EXPORT["synthetic_dataset"]["config"], "psi": 0.5, "min_agreement": 0.99}}},
        "000",
    )
    other_version = other.asset_materializations_for_node("synthetic_dataset")[0].metadata["export_version"].value
    assert other_version != version and export.exists() and (home / "export" / other_version).exists()
    strict = pd.read_parquet(home / "export" / other_version / "batches" / "000" / "dropped.parquet")
    assert (
        strict["low_agreement"].sum()
        == other.asset_materializations_for_node("synthetic_dataset")[0].metadata["dropped_low_agreement"].value
        > 0
    ), "pairs below min_agreement are dropped with their reason"
    assert (strict.loc[strict["low_agreement"], "fidelity"] < 0.99).all()
    _run([synthetic_dataset], instance, home, EXPORT, "001")  # the latest export is the default one again

    # -- downstream proof of value: the learning curve ------------------------------------------------------------
    down = dg.materialize(
        **selecting([downstream_eval, synthetic_helps]),
        instance=instance,
        resources=resources_for(home),
        run_config=dg.RunConfig(ops=DOWNSTREAM),
    )
    assert down.success
    dmeta = down.asset_materializations_for_node("downstream_eval")[0].metadata
    results = json.loads((home / "downstream" / "results.json").read_text())
    arms = {row["arm"] for row in results["summary"]}
    assert arms == {"real", "real_aug"} | {
        f"{a}:{r}" for a in ("syn_only", "mix", "syn_then_real") for r in ("ldm", "stylegan2")
    }
    assert dmeta["synthetic_pairs"].value == {"stylegan2": 5, "ldm": 5}
    assert dmeta["per_budget_routes"].value == ["ldm", "stylegan2"], "both routes retrained on the budget's labels"
    runs = pd.read_parquet(home / "downstream" / "runs.parquet")
    routed = runs[runs["route"] != ""]
    assert len(routed) and (routed["route_labels"] <= routed["budget"]).all(), "no route saw more labels than N"
    assert set(results["lambdas"]["2"]) == {"ldm", "stylegan2"} and results["lambdas"]["2"]["ldm"] in (0.3, 0.5)
    pre = runs[runs["arm"] == "syn_then_real:ldm"]
    assert sorted(pre["pretrain_share"].unique()) == [0.25, 0.5, 1.0], "the default pre-training lengths all ran"
    assert results["pretrain_shares"]["2"]["ldm"] in (0.25, 0.5, 1.0)
    assert dmeta["pretrain_share_chosen"].value == results["pretrain_shares"]
    for row in results["summary"]:
        assert 0 <= row["mean_dice"] <= 1 and row["seeds"] == 2
        if not row["arm"].startswith("syn_only"):
            assert row["real_passes"] == results["summary"][0]["real_passes"], "equal passes over the real crops"
    assert "gain_smallest" in dmeta and "curve" in dmeta and "fidelity_ldm" in dmeta
    real = results["real"]
    assert real["train_crops"] > 0 and real["val_crops"] > 0 and real["test_crops"] > 0
    checks = down.get_asset_check_evaluations()
    assert [c.check_name for c in checks] == ["synthetic_helps"]

    # -- nothing changed, nothing to redo: code and data versions say every asset is fresh -------------------------
    plan = stale_plan(instance, defs.get_repository_def())
    assert not any(plan.values()), plan
    skip = weekly_retraining(dg.build_schedule_context(instance=instance, repository_def=defs.get_repository_def()))
    assert isinstance(skip, dg.SkipReason), "the weekly retraining skips when nothing changed"


def test_an_export_of_one_route_needs_only_that_routes_assets():
    from assets.export import _lineage
    from resources.references import LdmModelRef

    ldm = LdmModelRef(
        path="/d/ldm/ckpt.pt",
        mlflow_run_id="r1",
        model_version="2",
        conditioning="concat",
        autoencoder="/d/ae.pt",
        autoencoder_mlflow_run="r0",
        mask_bank="/d/bank.npz",
        annotation_version="v1",
        train_slide_ids=["sl-1"],
        resolution=64,
        class_map="demo",
        step=40,
    )
    lineage = _lineage(["ldm"], None, None, ldm)  # no GAN, no classifier: not needed
    assert (lineage["ldm_checkpoint"], lineage["resolution"], lineage["source_slides"]) == (
        "/d/ldm/ckpt.pt",
        64,
        ["sl-1"],
    )
    with pytest.raises(FileNotFoundError, match=r"`gan_model` was never materialized: materialize `gan_model` first"):
        _lineage(["stylegan2", "ldm"], None, None, ldm)


def test_the_conditional_route_joins_only_at_the_same_resolution(tmp_path):
    from assets.export import _lineage
    from resources.references import FederatedGanRef, LdmModelRef

    (tmp_path / "lineage.json").write_text(
        json.dumps({"flower_run_id": 5, "rounds": [{"round": 1, "sites": [{"site": "h1", "slides": "sl-9"}]}]})
    )
    fed = FederatedGanRef(
        path="/d/fed/global.pt",
        lineage=str(tmp_path / "lineage.json"),
        mlflow_run_id="f1",
        model_version="3",
        participants={"1": ["h1"]},
        resolution=32,
    )
    alone = _lineage(["cgan_federated"], None, None, None, federated=fed)
    assert (alone["resolution"], alone["source_slides"], alone["cgan_sites"]) == (32, ["sl-9"], ["h1"])
    assert "class_map" not in alone, "tiles with a class bring no mask class map"
    ldm = LdmModelRef(
        path="/d/ldm.pt",
        mlflow_run_id="r1",
        model_version="2",
        conditioning="concat",
        autoencoder="/d/ae.pt",
        autoencoder_mlflow_run="r0",
        mask_bank="/d/bank.npz",
        annotation_version="v1",
        train_slide_ids=["sl-1"],
        resolution=64,
        class_map="demo",
    )
    with pytest.raises(ValueError, match="make 64-px pairs but federated_gan 32-px tiles; export cgan_federated"):
        _lineage(["ldm", "cgan_federated"], None, None, ldm, federated=fed)
    mixed = _lineage(["ldm", "cgan_federated"], None, None, ldm, federated=fed.model_copy(update={"resolution": 64}))
    assert mixed["source_slides"] == ["sl-1", "sl-9"] and mixed["class_map"] == "demo"
    with pytest.raises(FileNotFoundError, match="`federated_gan` was never materialized"):
        _lineage(["cgan_federated"], None, None, None, None)
