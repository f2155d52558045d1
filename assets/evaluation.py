"""Proof of value: does adding the synthetic pairs help a segmentation model on real, held-out tiles?

``real_annotations`` gives real image-mask pairs of held-out slides (with expert data: crops of the tiles their
QuPath slide annotations cover, ``source: slide_annotations``; for the demo: held-out crops labelled by the
stand-in). ``downstream_eval`` trains a small U-Net on (a) real pairs only and (b) real + the pairs of each generator
in the export (StyleGAN2 route, LDM route), for several seeds, and scores every set on the same held-out real pairs.
The asset check warns when no synthetic set helps.
"""

import json
from pathlib import Path

import dagster as dg
import numpy as np
import pandas as pd
from pydantic import Field

from assets.lineage import png_markdown
from ops.evaluation.metrics import overlay_png
from ops.evaluation.segmenter import UNetConfig, compare_training_sets, summarise
from ops.export.dataset import SyntheticSegmentationDataset
from ops.gan.loop import image_grid_png
from ops.labelling.annotations import get_class_map
from ops.labelling.demo_annotator import demo_annotate
from ops.slides.crops import PairCropSampler, TileCropSampler
from resources import FactoryStorage, MlflowTracking, TorchDevice
from resources.references import DownstreamRef, ExportRef, RealAnnotationsRef, TileAnnotationsRef, TrainingTilesRef

DOWNSTREAM_CODE_VERSION = "downstream-1"


REAL_SOURCES = ("demo_annotator", "slide_annotations")


class RealAnnotationConfig(dg.Config):
    """Real image-mask pairs of held-out slides: expert slide annotations, or the demo stand-in annotator."""

    source: str = Field(
        default="demo_annotator",
        description="slide_annotations: crops of held-out tiles annotated in QuPath (asset tile_annotations); "
        "demo_annotator: DEMO ONLY, held-out crops labelled by the rule-based stand-in.",
    )
    n: int = Field(default=48, description="Real crops (first real_train of them train, the rest test).")
    resolution: int = Field(
        default=64, description="Crop edge in pixels; equal to the exported pairs' (the generators') resolution."
    )
    seed: int = Field(default=0, description="Seeds crop positions.")


@dg.asset(
    group_name="evaluation",
    code_version=DOWNSTREAM_CODE_VERSION,
    kinds={"python"},
    description="Real image-mask pairs from held-out slides (slide annotations, or the demo stand-in).",
)
def real_annotations(
    context: dg.AssetExecutionContext,
    config: RealAnnotationConfig,
    training_tiles: TrainingTilesRef,
    tile_annotations: TileAnnotationsRef | None,
    storage: FactoryStorage,
) -> dg.MaterializeResult:
    if config.source not in REAL_SOURCES:
        raise ValueError(f"real_annotations.source: unknown {config.source!r}; expected one of {REAL_SOURCES}")
    resolution = config.resolution
    if config.source == "slide_annotations":
        if tile_annotations is None:
            raise FileNotFoundError(
                "real_annotations.source is slide_annotations but `tile_annotations` was never materialized: "
                "materialize `tile_annotations` first, or use source: demo_annotator for the demo"
            )
        table = pd.read_parquet(tile_annotations.table)
        held = table[table["split"] == "holdout"]
        if held.empty:
            raise ValueError(
                f"no annotated tile lies on a held-out slide; put the QuPath GeoJSON of a held-out slide "
                f"into {storage.slide_annotation_inbox} and rematerialize tile_annotations"
            )
        images, masks = PairCropSampler(held, resolution, seed=config.seed, crops_per_tile=1).batch_uint8(config.n)
        colours = get_class_map(tile_annotations.class_map).colours
    else:
        tiles = pd.read_parquet(training_tiles.path)
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
        value=RealAnnotationsRef(path=str(out), source=config.source, resolution=resolution),
        metadata={
            "pairs": config.n,
            "source": config.source,
            "overlay": png_markdown(overlay_png(images[0], masks[0], colours), "real tile with its mask"),
            "path": dg.MetadataValue.path(str(out)),
        },
    )


class DownstreamConfig(dg.Config):
    """The U-Net comparison real vs real + synthetic."""

    real_train: int = Field(default=16, description="Real pairs used for training; the rest are the test set.")
    synthetic_max: int = Field(default=200, description="Synthetic pairs of each generator added to the real ones.")
    seeds: list[int] = Field(default=[0, 1, 2], description="Training seeds (mean +- sd over them).")
    steps: int = Field(default=300, description="U-Net optimiser steps per run, equal for both training sets.")
    base_channels: int = Field(default=16, description="U-Net width.")


@dg.asset(
    group_name="evaluation",
    code_version=DOWNSTREAM_CODE_VERSION,
    kinds={"pytorch", "mlflow"},
    pool="training",
    description="U-Net trained on real vs real + synthetic pairs, Dice on held-out real pairs (mean +- sd).",
)
def downstream_eval(
    context: dg.AssetExecutionContext,
    config: DownstreamConfig,
    real_annotations: RealAnnotationsRef,
    synthetic_dataset: dict[str, ExportRef],
    storage: FactoryStorage,
    mlflow_tracking: MlflowTracking,
    torch_device: TorchDevice,
) -> dg.MaterializeResult:
    real = np.load(real_annotations.path)
    images, masks = real["images"], real["masks"]
    if len(images) <= config.real_train:
        raise ValueError(f"{len(images)} real pairs leave no test set with real_train={config.real_train}")
    export_dir = Path(max(synthetic_dataset.values(), key=lambda ref: ref.created_at).path)  # the latest batch
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
        value=DownstreamRef(path=str(out), content_hash=export_dir.name),
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
        },
    )


def _synthetic_pairs(dataset: SyntheticSegmentationDataset, limit: int) -> tuple[np.ndarray, np.ndarray]:
    """The first ``limit`` pairs of an export as uint8 arrays (images ``[N, R, R, 3]``, masks ``[N, R, R]``)."""
    pairs = [dataset[i] for i in range(min(limit, len(dataset)))]
    images = np.stack([(x.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8) for x, _ in pairs])
    return images, np.stack([y.numpy().astype(np.uint8) for _, y in pairs])


@dg.asset_check(asset=downstream_eval, description="Warns when no real + synthetic set beats real only.")
def synthetic_helps(storage: FactoryStorage) -> dg.AssetCheckResult:
    summary = json.loads(storage.downstream_path.read_text())["summary"]
    real = summary["real"]["mean_dice_mean"]
    mixed = {name.removeprefix("real+"): stats["mean_dice_mean"] for name, stats in summary.items() if name != "real"}
    helping = sorted(g for g, dice in mixed.items() if dice > real)
    return dg.AssetCheckResult(
        passed=bool(helping),
        severity=dg.AssetCheckSeverity.WARN,
        metadata={
            "mean_dice_real": real,
            **{f"mean_dice_real_plus_{g}": d for g, d in mixed.items()},
            **{f"delta_{g}": d - real for g, d in mixed.items()},
        },
        description=f"synthetic pairs help: {', '.join(helping)}"
        if helping
        else "no generator's synthetic pairs improve mean Dice over real only",
    )
