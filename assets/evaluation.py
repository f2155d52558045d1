"""Proof of value: does adding the synthetic pairs help a segmentation model on real, held-out tiles?

``real_annotations`` gives real image-mask pairs of held-out slides (with expert data: crops of the tiles their
QuPath slide annotations cover, ``source: slide_annotations``; for the demo: held-out crops labelled by the
stand-in). ``downstream_eval`` trains a small U-Net on (a) real pairs only and (b) real + the pairs of each generator
in the export (StyleGAN2 route, LDM route), for several seeds, and scores every set on the same held-out real pairs.
The asset check warns when no synthetic set helps.
"""

import json
from typing import Literal

import dagster as dg
import numpy as np
import pandas as pd
from pydantic import Field

from assets.export import synthetic_dataset
from assets.gan import gan_model
from assets.gates import gate, latest_metadata, number
from assets.labelling import tile_annotation_class_map, tile_annotations
from assets.lineage import png_markdown
from assets.slides import training_tiles
from ops.common.images import image_grid_png
from ops.evaluation.metrics import overlay_png
from ops.evaluation.segmenter import UNetConfig, compare_training_sets, summarise
from ops.export.dataset import SyntheticSegmentationDataset
from ops.labelling.class_maps import get_class_map
from ops.labelling.demo_annotator import demo_annotate
from ops.slides.crops import PairCropSampler, TileCropSampler
from resources import FactoryStorage, MlflowTracking, TorchDevice

DOWNSTREAM_CODE_VERSION = "downstream-1"


class RealAnnotationConfig(dg.Config):
    """Real image-mask pairs of held-out slides: expert slide annotations, or the demo stand-in annotator."""

    source: Literal["demo_annotator", "slide_annotations"] = Field(
        default="demo_annotator",
        description="slide_annotations: crops of held-out tiles annotated in QuPath (asset tile_annotations); "
        "demo_annotator: DEMO ONLY, held-out crops labelled by the rule-based stand-in.",
    )
    n: int = Field(default=48, ge=2, description="Real crops (first real_train of them train, the rest test).")
    seed: int = Field(default=0, description="Seeds crop positions.")


@dg.asset(
    group_name="evaluation",
    deps=[training_tiles, gan_model, tile_annotations],
    code_version=DOWNSTREAM_CODE_VERSION,
    kinds={"python"},
    description="Real image-mask pairs from held-out slides (slide annotations, or the demo stand-in).",
)
def real_annotations(
    context: dg.AssetExecutionContext, config: RealAnnotationConfig, storage: FactoryStorage
) -> dg.MaterializeResult:
    storage.require("training_tiles", "gan_model")
    resolution = json.loads((storage.gan_root / "current.json").read_text())["resolution"]
    if config.source == "slide_annotations":
        storage.require("tile_annotations")
        table = pd.read_parquet(storage.tile_annotations_dir / "tiles.parquet")
        held = table[table["split"] == "holdout"]
        if held.empty:
            raise ValueError(
                f"no annotated tile lies on a held-out slide; put the QuPath GeoJSON of a held-out slide "
                f"into {storage.slide_annotation_inbox} and rematerialize tile_annotations"
            )
        images, masks = PairCropSampler(held, resolution, seed=config.seed, crops_per_tile=1).batch_uint8(config.n)
        colours = get_class_map(tile_annotation_class_map(storage)).colours
    else:
        tiles = pd.read_parquet(storage.training_dir / "tiles.parquet")
        holdout = tiles[tiles["split"] == "holdout"]
        if holdout.empty:
            raise ValueError("training_tiles has no held-out tiles; real test pairs must come from unseen slides")
        context.log.warning("DEMO: real tiles are labelled by the rule-based stand-in annotator, not an expert")
        images = TileCropSampler(holdout, resolution, seed=config.seed, crops_per_tile=1).batch_uint8(config.n)
        masks = np.stack([demo_annotate(img) for img in images])
        colours = get_class_map("demo").colours
    out = storage.real_annotations_path
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp.npz")
    np.savez_compressed(tmp, images=images, masks=masks)
    tmp.replace(out)
    return dg.MaterializeResult(
        metadata={
            "pairs": config.n,
            "source": config.source,
            "overlay": png_markdown(overlay_png(images[0], masks[0], colours), "real tile with its mask"),
            "path": dg.MetadataValue.path(str(out)),
        }
    )


class DownstreamConfig(dg.Config):
    """The U-Net comparison real vs real + synthetic."""

    real_train: int = Field(default=16, description="Real pairs used for training; the rest are the test set.")
    synthetic_max: int = Field(default=200, description="Synthetic pairs of each generator added to the real ones.")
    seeds: list[int] = Field(default=[0, 1, 2], description="Training seeds (mean +- sd over them).")
    steps: int = Field(default=300, description="U-Net optimiser steps per run, equal for both training sets.")
    base_channels: int = Field(default=16, description="U-Net width.")


def _latest_export(context: dg.AssetExecutionContext, storage: FactoryStorage):
    event = context.instance.get_latest_materialization_event(synthetic_dataset.key)
    if event is None:
        raise ValueError("no synthetic_dataset batch has been materialized; run the export first")
    return storage.export_root / event.asset_materialization.metadata["export_version"].value


@dg.asset(
    group_name="evaluation",
    deps=[real_annotations, synthetic_dataset],
    code_version=DOWNSTREAM_CODE_VERSION,
    kinds={"pytorch", "mlflow"},
    pool="training",
    description="U-Net trained on real vs real + synthetic pairs, Dice on held-out real pairs (mean +- sd).",
)
def downstream_eval(
    context: dg.AssetExecutionContext,
    config: DownstreamConfig,
    storage: FactoryStorage,
    mlflow_tracking: MlflowTracking,
    torch_device: TorchDevice,
) -> dg.MaterializeResult:
    storage.require("real_annotations")
    real = np.load(storage.real_annotations_path)
    images, masks = real["images"], real["masks"]
    if len(images) <= config.real_train:
        raise ValueError(f"{len(images)} real pairs leave no test set with real_train={config.real_train}")
    export_dir = _latest_export(context, storage)
    manifest = pd.read_parquet(export_dir / "manifest.parquet")
    generators = sorted(manifest["generator"].unique())
    train_real = (images[: config.real_train], masks[: config.real_train])
    test = (images[config.real_train :], masks[config.real_train :])
    classes = [c["name"] for c in json.loads((export_dir / "classes.json").read_text())]
    sets, synthetic = {"real": train_real}, {}
    for generator in generators:  # real + each generator's pairs, same held-out test set
        syn_images, syn_masks = _synthetic_pairs(
            SyntheticSegmentationDataset(export_dir, generator=generator), config.synthetic_max
        )
        synthetic[generator] = syn_images
        sets[f"real+{generator}"] = (
            np.concatenate([train_real[0], syn_images]),
            np.concatenate([train_real[1], syn_masks]),
        )
    cfg = UNetConfig(in_channels=3, n_classes=len(classes), base_channels=config.base_channels)
    device = torch_device.device()
    table = compare_training_sets(
        sets,
        test,
        len(classes),
        seeds=tuple(config.seeds),
        steps=config.steps,
        class_names=classes,
        cfg=cfg,
        device=str(device),
    )
    summary = summarise(table)
    result = {
        "summary": summary,
        "synthetic_pairs": {g: len(x) for g, x in synthetic.items()},
        "real_train": config.real_train,
        "real_test": len(test[0]),
        "export": export_dir.name,
    }
    out = storage.downstream_path
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".tmp").write_text(json.dumps(result, indent=1, default=float))
    out.with_suffix(".tmp").replace(out)
    with mlflow_tracking.start_run(
        "downstream-eval", {"dagster_run_id": context.run.run_id, "export_version": export_dir.name}
    ):
        import mlflow

        mlflow.log_params({**config.model_dump(), **{f"synthetic_pairs_{g}": len(x) for g, x in synthetic.items()}})
        for name, stats in summary.items():
            mlflow.log_metrics(
                {f"{name}/{k}".replace("+", "_plus_"): float(v) for k, v in stats.items() if np.isfinite(v)}
            )
    real_dice = summary["real"]["mean_dice_mean"]
    per_set = {}
    for generator in generators:
        stats = summary[f"real+{generator}"]
        per_set.update(
            {
                f"mean_dice_real_plus_{generator}": stats["mean_dice_mean"],
                f"mean_dice_sd_real_plus_{generator}": stats["mean_dice_sd"],
                f"delta_mean_dice_{generator}": stats["mean_dice_mean"] - real_dice,
            }
        )
    return dg.MaterializeResult(
        metadata={
            "mean_dice_real": real_dice,
            "mean_dice_sd_real": summary["real"]["mean_dice_sd"],
            **per_set,
            "summary": dg.MetadataValue.json(summary),
            "synthetic_pairs": dg.MetadataValue.json({g: len(x) for g, x in synthetic.items()}),
            "test_pairs": len(test[0]),
            "seeds": len(config.seeds),
            **{
                f"synthetic_examples_{g}": png_markdown(image_grid_png(x[:16], columns=8, scale=2), f"{g} pairs")
                for g, x in synthetic.items()
            },
        }
    )


def _synthetic_pairs(dataset: SyntheticSegmentationDataset, limit: int) -> tuple[np.ndarray, np.ndarray]:
    """The first ``limit`` pairs of an export as uint8 arrays (images ``[N, R, R, 3]``, masks ``[N, R, R]``)."""
    pairs = [dataset[i] for i in range(min(limit, len(dataset)))]
    images = np.stack([(x.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8) for x, _ in pairs])
    return images, np.stack([y.numpy().astype(np.uint8) for _, y in pairs])


# ----------------------------------------------------------------------------------------------------------------
# Quality gates (see assets/gates.py).


class SyntheticHelpsGate(dg.Config):
    """Threshold of ``downstream_eval``'s ``synthetic_helps`` check (a warning: the value is the product's claim)."""

    min_gain: float = Field(
        default=0.0, description="Mean Dice a real + synthetic set must gain over real only to count as helping."
    )


@dg.asset_check(asset=downstream_eval, description="Warns when no real + synthetic set beats real only.")
def synthetic_helps(context: dg.AssetCheckExecutionContext, config: SyntheticHelpsGate) -> dg.AssetCheckResult:
    meta = latest_metadata(context, downstream_eval.key)
    gains = {k.removeprefix("delta_mean_dice_"): float(v) for k, v in meta.items() if k.startswith("delta_mean_dice_")}
    helping = sorted(g for g, gain in gains.items() if gain > config.min_gain)
    return gate(
        "best_gain",
        max(gains.values(), default=float("nan")),
        ">",
        "min_gain",
        config.min_gain,
        "synthetic pairs help the U-Net",
        blocking=False,
        extra={
            "mean_dice_real": number(meta, "mean_dice_real", "downstream_eval"),
            **{f"delta_{g}": gain for g, gain in gains.items()},
            "helping": ", ".join(helping) or "none",
        },
    )
