"""The synthetic dataset: image-mask pairs in batches (partitions), filtered by ensemble uncertainty and by a
memorization check, written as a versioned, documented export folder.
"""

import hashlib
import json
import time
from importlib.metadata import version as package_version

import dagster as dg
import numpy as np
import pandas as pd
import torch
from pydantic import Field

from assets.labelling import classifier_eval, pixel_classifier
from assets.lineage import png_markdown
from ops.annotations import get_class_map
from ops.gan_loop import image_grid_png
from ops.gan_training import load_generator
from ops.memorization import check_memorization
from ops.pixel_classifier import PixelEnsemble
from ops.synthetic_export import (
    ExportParams,
    assemble_manifest,
    sample_id,
    synthesize_batch,
    synthesize_on_dask,
    uncertain_to_drop,
    write_batch,
)
from ops.tile_dataset import TileCropSampler
from ops.tile_store import replace_dir, temp_dir_beside
from resources import DaskResource, FactoryStorage, TorchDevice

EXPORT_CODE_VERSION = "export-1"
MAX_BATCHES = 50
export_batches = dg.StaticPartitionsDefinition([f"{i:03d}" for i in range(MAX_BATCHES)])


class ExportConfig(dg.Config):
    """One batch of the synthetic dataset (see ``ops.synthetic_export.ExportParams``)."""

    batch_size: int = Field(default=100, description="Samples per batch; N = batches materialized x batch_size.")
    psi: float = Field(default=0.7, description="Truncation psi.")
    mode: str = Field(default="mean", description="Ensemble decision: mean probability or majority vote.")
    drop_uncertain: float = Field(default=0.1, description="Most uncertain fraction of each batch dropped.")
    top_frac: float = Field(default=0.1, description="Top fraction of pixels averaged into an image's score.")
    copy_quantile: float = Field(
        default=0.01, description="Near-copy threshold: this quantile of training-tile to training-tile NN distances."
    )
    memorization_bank: int = Field(default=1000, description="Training crops the memorization check compares with.")


def export_version(lineage: dict, params: ExportParams, config: ExportConfig) -> str:
    """Hash of the upstream versions and the config: a changed GAN, classifier, labels or setting = new folder."""
    payload = json.dumps({"lineage": lineage, "params": params.to_dict(), "config": config.model_dump()},
                         sort_keys=True)
    return hashlib.sha256(payload.encode()).hexdigest()[:12]


def _lineage(storage: FactoryStorage) -> dict:
    gan = json.loads((storage.gan_root / "current.json").read_text())
    classifier = json.loads((storage.classifier_dir / "lineage.json").read_text())
    return {
        "gan_mlflow_run": gan["mlflow_run_id"], "gan_model_version": gan["model_version"], "gan_step": gan["step"],
        "gan_checkpoint": gan["checkpoint"], "classifier_mlflow_run": classifier["mlflow_run_id"],
        "annotation_version": classifier["annotation_version"], "blocks": classifier.get("blocks", 5),
        "source_slides": gan["train_slide_ids"], "class_map": classifier.get("class_map", "demo"),
        "resolution": gan["resolution"],
    }


@dg.asset(group_name="export", partitions_def=export_batches, deps=[pixel_classifier, classifier_eval],
          code_version=EXPORT_CODE_VERSION, kinds={"pytorch", "parquet"},
          description="Synthetic image-mask pairs, one batch per partition, uncertainty- and memorization-filtered.")
def synthetic_dataset(context: dg.AssetExecutionContext, config: ExportConfig, storage: FactoryStorage,
                      torch_device: TorchDevice, dask: DaskResource) -> dg.MaterializeResult:
    storage.require("training_tiles", "gan_model", "pixel_classifier")
    device = torch_device.device()
    batch = int(context.partition_key)
    lineage = _lineage(storage)
    params = ExportParams(batch_size=config.batch_size, psi=config.psi, blocks=lineage["blocks"], mode=config.mode,
                          drop_uncertain=config.drop_uncertain, top_frac=config.top_frac)
    version = export_version({k: v for k, v in lineage.items() if k != "gan_checkpoint"}, params, config)
    export_dir = storage.export_root / version
    class_map = get_class_map(lineage["class_map"])
    start = time.perf_counter()
    cluster = dask.spec().address
    if cluster:  # scale out: workers regenerate their share of the batch's seeds from the checkpoint files
        context.log.info(f"generating batch {batch} on the dask cluster at {cluster}")
        result = synthesize_on_dask(lineage["gan_checkpoint"], storage.classifier_dir / "ensemble.pt", batch,
                                    params, address=cluster)
    else:
        G = load_generator(lineage["gan_checkpoint"], device)
        result = synthesize_batch(G, PixelEnsemble.load(storage.classifier_dir / "ensemble.pt"), batch, params,
                                  device)

    tiles = pd.read_parquet(storage.training_dir / "tiles.parquet")
    train = tiles[tiles["split"] == "train"]
    bank = TileCropSampler(train, lineage["resolution"], seed=4242, crops_per_tile=1).batch_uint8(
        min(config.memorization_bank, max(len(train), 1) * 8))
    memo = check_memorization(result.images, bank, checkpoint=lineage["gan_checkpoint"],
                              quantile=config.copy_quantile)
    uncertain = uncertain_to_drop(np.where(memo["near_copy"], -np.inf, result.uncertainty), config.drop_uncertain)
    keep = ~(uncertain | memo["near_copy"].to_numpy())

    rows = _manifest_rows(result, batch, memo, lineage, class_map, tiles["mpp"].dropna())
    tmp = temp_dir_beside(export_dir / "batches" / f"{batch:03d}")
    write_batch(tmp, result, keep, rows, class_map.palette())
    replace_dir(tmp, export_dir / "batches" / f"{batch:03d}")
    full = assemble_manifest(export_dir)
    _write_card(export_dir, version, lineage, params, class_map, full)
    seconds = time.perf_counter() - start
    return dg.MaterializeResult(
        metadata={
            "export_version": version,
            "kept": int(keep.sum()),
            "dropped_uncertain": int(uncertain.sum()),
            "dropped_near_copy": int(memo["near_copy"].sum()),
            "uncertainty_mean": float(result.uncertainty.mean()),
            "nn_pixel_distance": dg.MetadataValue.json(_quantiles(memo["nn_pixel"])),
            "nn_feature_distance": dg.MetadataValue.json(_quantiles(memo["nn_feature"])),
            "copy_thresholds": dg.MetadataValue.json({k: float(v) for k, v in memo.attrs.items()
                                                      if isinstance(v, int | float)}),
            "pairs_per_second": round(len(result.seeds) / seconds, 2),
            "export_samples_total": len(full),
            "samples": png_markdown(image_grid_png(result.images[keep][:16], columns=8, scale=2), "kept samples"),
            "path": dg.MetadataValue.path(str(export_dir)),
        },
    )


def _quantiles(values: pd.Series) -> dict[str, float]:
    v = values.dropna().to_numpy()
    return {f"q{q}": round(float(np.quantile(v, q / 100)), 4) for q in (0, 5, 50, 95, 100)} if len(v) else {}


def _manifest_rows(result, batch: int, memo: pd.DataFrame, lineage: dict, class_map, mpps: pd.Series
                   ) -> pd.DataFrame:
    """One manifest row per sample; source slides appear only as opaque ids."""
    n_classes = class_map.n_classes
    fractions = np.stack([np.bincount(m.ravel(), minlength=n_classes)[:n_classes] / m.size for m in result.masks])
    ids = [sample_id(s) for s in result.seeds]
    rows = pd.DataFrame({
        "sample_id": ids,
        "image": [f"batches/{batch:03d}/images/{i}.png" for i in ids],
        "mask": [f"batches/{batch:03d}/masks/{i}.png" for i in ids],
        "batch": batch,
        "seed": result.seeds,
        "latents": [f"batches/{batch:03d}/latents.npz#{j}" for j in range(len(ids))],
        "uncertainty": result.uncertainty,
        "nn_pixel_distance": memo["nn_pixel"].to_numpy(np.float32),
        "nn_feature_distance": memo["nn_feature"].to_numpy(np.float32),
        "near_copy": memo["near_copy"].to_numpy(bool),
        "mpp": float(mpps.median()) if len(mpps) else float("nan"),
        "generator": "stylegan2",
        "gan_mlflow_run": lineage["gan_mlflow_run"],
        "gan_model_version": lineage["gan_model_version"],
        "classifier_mlflow_run": lineage["classifier_mlflow_run"],
        "annotation_version": lineage["annotation_version"],
        "source_slides": ";".join(lineage["source_slides"]),
        "histofactory_version": package_version("histofactory"),
        "torch_version": torch.__version__,
    })
    for k, name in enumerate(class_map.classes):
        rows[f"frac_{name.replace(' ', '_')}"] = fractions[:, k].astype(np.float32)
    return rows


def _write_card(export_dir, version: str, lineage: dict, params: ExportParams, class_map, manifest) -> None:
    classes = [{"id": i, "name": n, "colour": list(c)} for i, (n, c) in
               enumerate(zip(class_map.classes, class_map.colours, strict=True))]
    (export_dir / "classes.json").write_text(json.dumps(classes, indent=1))
    fractions = {c["name"]: round(float(manifest[f"frac_{c['name'].replace(' ', '_')}"].mean()), 4)
                 for c in classes} if len(manifest) else {}
    card = f"""# Synthetic histopathology segmentation dataset `{version}`

Made by histofactory {package_version("histofactory")} (DatasetGAN/HDGAN recipe): a StyleGAN2-ADA generator
trained on tissue tiles of {len(lineage["source_slides"])} slides (opaque ids in the manifest), images labelled
pixel by pixel by an ensemble of MLPs over the generator's features, trained on expert annotations of generated
images (annotation set `{lineage["annotation_version"]}`).

- samples: {len(manifest)} (batches of {params.batch_size};
  seeds `{params.seed_base} + batch * {params.batch_size} + i`)
- truncation psi: {params.psi}; features: last {params.blocks} synthesis blocks; ensemble decision: {params.mode}
- filtering: the {params.drop_uncertain:.0%} most uncertain images of each batch (JS divergence across members,
  mean of the top {params.top_frac:.0%} pixels) and near-copies of training tiles are dropped
- GAN: MLflow run `{lineage["gan_mlflow_run"]}`, model version `{lineage["gan_model_version"]}`
- classifier: MLflow run `{lineage["classifier_mlflow_run"]}`

## Classes (mask pixel value, name, colour, mean pixel share)

""" + "\n".join(f"- {c['id']}: {c['name']} {tuple(c['colour'])} {fractions.get(c['name'], 0):.2%}"
                for c in classes) + """

## Files

- `manifest.parquet` / `manifest.csv`: one row per sample (paths relative to this folder, seed, latents,
  uncertainty, nearest-neighbour distances to training tiles, class pixel fractions, mpp, lineage)
- `batches/<b>/images/<id>.png` RGB image; `batches/<b>/masks/<id>.png` indexed mask (palette = class colours)
- `batches/<b>/latents.npz`: `seeds`, `z`, `w` of every generated sample (kept or dropped)
- `batches/<b>/dropped.parquet`: samples dropped and why (uncertainty, near_copy)
- `classes.json`: class ids, names, colours

Load in PyTorch: `SyntheticSegmentationDataset("<this folder>")` from `ops.synthetic_dataset`.
"""
    tmp = export_dir / ".dataset_card.md.tmp"
    tmp.write_text(card)
    tmp.replace(export_dir / "dataset_card.md")
