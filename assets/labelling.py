"""DatasetGAN/HDGAN labelling assets: annotations of generated images, their generator features (zarr, native
resolution), the pixel-classifier ensemble, and its evaluation on the test split.
"""

import hashlib
import time
from pathlib import Path
from typing import Literal

import dagster as dg
import numpy as np
import pandas as pd
import torch
import zarr
from pydantic import Field

from assets.gates import gate, latest_metadata, number
from assets.lineage import content_hash, png_array, png_markdown, tile_set_hash
from assets.training_run import TrainingRun
from ops.diffusion.mask_bank import shares
from ops.evaluation.metrics import (
    chance_mean_dice,
    confusion_matrix,
    confusion_matrix_png,
    overlay_png,
    segmentation_report,
)
from ops.gan.trainer import load_generator
from ops.labelling.annotation_sets import (
    MASK_SUFFIXES,
    annotation_set_version,
    load_mask,
    match_annotations,
    split_indices,
)
from ops.labelling.class_maps import AnnotationError, get_class_map
from ops.labelling.demo_annotator import write_demo_annotation
from ops.labelling.feature_sampler import BatchStream, FeatureSampler
from ops.labelling.feature_store import FeatureStoreWriter, write_upsampled_features
from ops.labelling.pixel_classifier import EnsembleConfig, MLPConfig, PixelEnsemble
from ops.labelling.pixel_classifier import TrainConfig as MlpTrainConfig
from ops.labelling.slide_annotations import (
    labelled_tiles,
    load_slide_annotations,
    rasterize_onto_tiles,
    write_demo_slide_annotations,
    write_mask_store,
)
from ops.slides.reader import open_slide
from ops.slides.tile_store import replace_dir, temp_dir_beside
from resources import FactoryStorage, MlflowTracking, TorchDevice
from resources.references import (
    AnnotationsRef,
    ClassifierEvalRef,
    GanModelRef,
    GeneratedFeaturesRef,
    GeneratedSamplesRef,
    PixelClassifierRef,
    TileAnnotationsRef,
    TrainingTilesRef,
)

# Unchanged from when tile_annotations lived with the diffusion assets, so existing masks are not reported stale.
TILE_ANNOTATION_CODE_VERSION = "ldm-1"
LABELLING_CODE_VERSION = "labelling-1"
CLASSIFIER_MODEL_NAME = "histofactory-pixel-classifier"


class AnnotationConfig(dg.Config):
    """Where expert masks come from and how the annotated images are split."""

    class_map: Literal["demo", "paper"] = Field(
        default="demo", description="Class map: demo (IHC demo classes) or paper (HDGAN kidney)."
    )
    demo_annotator: bool = Field(
        default=False,
        description="DEMO ONLY: when the annotation inbox is empty, label generated samples with the rule-based "
        "stand-in annotator (PNG and QuPath GeoJSON, like an expert's delivery).",
    )
    demo_count: int = Field(default=36, ge=1, description="Samples the demo annotator labels.")
    n_train: int = Field(default=16, ge=1, description="Annotated images for training (paper: 16).")
    n_val: int = Field(default=4, ge=0, description="... for validation / early stopping (paper: 4).")
    n_test: int = Field(default=16, ge=0, description="... for the test split (paper: 16).")
    seed: int = Field(default=0, description="Seeds the split.")


@dg.asset(
    group_name="labelling",
    code_version=LABELLING_CODE_VERSION,
    kinds={"python", "zarr"},
    description="Expert masks (indexed PNG or QuPath GeoJSON) of generated images, validated and versioned.",
)
def annotations(
    context: dg.AssetExecutionContext,
    config: AnnotationConfig,
    generated_samples: GeneratedSamplesRef,
    storage: FactoryStorage,
) -> dg.MaterializeResult:
    class_map = get_class_map(config.class_map)
    samples = zarr.open_group(generated_samples.path, mode="r")
    images = samples["images"]
    image_ids = [f"sample_{i:05d}" for i in range(images.shape[0])]
    inbox = storage.annotation_inbox
    inbox.mkdir(parents=True, exist_ok=True)
    files = [p for p in inbox.iterdir() if p.suffix.lower() in MASK_SUFFIXES and not p.name.startswith(".")]
    if not files and config.demo_annotator:
        count = min(config.demo_count, len(image_ids))
        context.log.warning(f"DEMO: labelling {count} generated samples with the rule-based stand-in annotator")
        for i in range(count):
            write_demo_annotation(images[i], inbox, image_ids[i], formats=("png",) if i % 2 == 0 else ("geojson",))
        files = sorted(inbox.iterdir())
    if not files:
        raise AnnotationError(
            f"{inbox}: no annotation files. Export images with generated_samples.export_for_annotation, annotate "
            "them (QuPath), and put masks named like the images (sample_00012.png / .geojson) here; or set "
            "demo_annotator=true for the demo."
        )
    matched = match_annotations(files, image_ids)
    ids = sorted(matched)
    shape = tuple(images.shape[1:3])
    masks = np.stack([load_mask(matched[i], shape, class_map) for i in ids])
    train, val, test = split_indices(len(ids), config.n_train, config.n_val, config.n_test, config.seed)
    split = np.full(len(ids), "unused", dtype=object)
    split[train], split[val], split[test] = "train", "val", "test"
    version = annotation_set_version(matched.values())
    index = pd.DataFrame(
        {
            "image_id": ids,
            "sample_index": [int(i.split("_")[1]) for i in ids],
            "file": [matched[i].name for i in ids],
            "split": split,
        }
    )
    tmp = temp_dir_beside(storage.annotations_dir)
    group = zarr.open_group(str(tmp / "labels.zarr"), mode="w", zarr_format=3)
    group.create_array("labels", data=masks, chunks=(1, *shape))
    group.attrs.update({"class_map": config.class_map, "classes": list(class_map.classes), "version": version})
    index.to_parquet(tmp / "index.parquet", index=False)
    replace_dir(tmp, storage.annotations_dir)
    shares = np.bincount(masks.ravel(), minlength=class_map.n_classes)[: class_map.n_classes] / masks.size
    return dg.MaterializeResult(
        value=AnnotationsRef(
            path=str(storage.annotations_dir),
            content_hash=version,
            class_map=config.class_map,
            resolution=shape[0],
        ),
        metadata={
            "annotation_version": version,
            "images": len(ids),
            "split": dg.MetadataValue.json({s: int((split == s).sum()) for s in ("train", "val", "test", "unused")}),
            "class_shares": dg.MetadataValue.json(
                {c: round(float(v), 4) for c, v in zip(class_map.classes, shares, strict=True)}
            ),
            "overlay": png_markdown(
                overlay_png(images[index.sample_index[0]], masks[0], class_map.colours), "first annotated image"
            ),
            "path": dg.MetadataValue.path(str(storage.annotations_dir)),
        },
        data_version=dg.DataVersion(version),
    )


class FeatureConfig(dg.Config):
    """Which generator blocks become pixel features, and how they are stored."""

    blocks: int = Field(default=5, ge=1, description="Last K synthesis blocks captured (HDGAN: 5).")
    layout: Literal["native", "both"] = Field(
        default="native",
        description="native (each block at its own resolution, upsampled on the fly) or both (also write HDGAN's "
        "fully upsampled memmap layout, for comparison).",
    )


@dg.asset(
    group_name="labelling",
    code_version=LABELLING_CODE_VERSION,
    kinds={"pytorch", "zarr"},
    description="Features of the last K synthesis blocks of the annotated images, native resolution, zarr.",
)
def generated_features(
    context: dg.AssetExecutionContext,
    config: FeatureConfig,
    annotations: AnnotationsRef,
    gan_model: GanModelRef,
    generated_samples: GeneratedSamplesRef,
    storage: FactoryStorage,
    torch_device: TorchDevice,
) -> dg.MaterializeResult:
    device = torch_device.device()
    G = load_generator(gan_model.path, device)
    if not 1 <= config.blocks <= len(G.block_resolutions):
        raise ValueError(f"blocks must be in 1..{len(G.block_resolutions)} for this generator, got {config.blocks}")
    index = pd.read_parquet(Path(annotations.path) / "index.parquet")
    ws = zarr.open_group(generated_samples.path, mode="r")["w"]
    chans = G.block_channels[-config.blocks :]
    resolutions = G.block_resolutions[-config.blocks :]
    native_bytes = len(index) * sum(c * r * r for c, r in zip(chans, resolutions, strict=True)) * 2
    upsampled_bytes = len(index) * sum(chans) * resolutions[-1] ** 2 * 2 if config.layout == "both" else 0
    storage.require_free_disk(native_bytes + upsampled_bytes, f"generated_features ({len(index)} images)")
    start = time.perf_counter()
    out = storage.features_dir / "native.zarr"
    with FeatureStoreWriter(
        out,
        len(index),
        [(c, r, r) for c, r in zip(chans, resolutions, strict=True)],
        overwrite=True,
        attrs={"image_ids": index["image_id"].tolist(), "checkpoint": gan_model.path},
    ) as writer:
        for row, sample in enumerate(index["sample_index"]):
            with torch.no_grad():
                w = torch.from_numpy(np.asarray(ws[int(sample)])[None]).to(device)
                _, feats = G.synthesis(w, noise_mode="const", return_features=True)
            blocks = [f[0].float().cpu().numpy() for f in feats[-config.blocks :]]
            writer.write(row, blocks)
            if config.layout == "both":
                write_upsampled_features(storage.features_dir / "upsampled" / f"{row:05d}.npy", blocks)
    store_bytes = sum(p.stat().st_size for p in out.rglob("*") if p.is_file())
    res = G.block_resolutions[-1]
    full_bytes = len(index) * res * res * sum(chans) * 4
    return dg.MaterializeResult(
        value=GeneratedFeaturesRef(
            path=str(out),
            blocks=config.blocks,
            resolution=res,
            content_hash=content_hash(
                [gan_model.content_hash, gan_model.step, annotations.content_hash, config.blocks]
            ),
        ),
        metadata={
            "images": len(index),
            "features_per_pixel": int(sum(chans)),
            "block_resolutions": dg.MetadataValue.json(resolutions),
            "store_bytes": store_bytes,
            "upsampled_fp32_bytes": full_bytes,
            "disk_ratio_vs_upsampled_fp32": round(full_bytes / max(store_bytes, 1), 2),
            "seconds": round(time.perf_counter() - start, 2),
            "store": dg.MetadataValue.path(str(out)),
        },
    )


class ClassifierConfig(dg.Config):
    """The DatasetGAN/HDGAN ensemble of small MLPs over per-pixel features."""

    members: int = Field(default=10, ge=1, description="Ensemble size (DatasetGAN: 10).")
    hidden: list[int] = Field(default=[128, 32], description="Hidden widths (HDGAN: 128, 32).")
    dropout: float = Field(default=0.3, ge=0, lt=1, description="Dropout after each hidden layer.")
    optimizer: Literal["adam", "sgd"] = Field(
        default="adam", description="adam (DatasetGAN, lr 1e-3) or sgd (HDGAN, lr 1e-4)."
    )
    lr: float | None = Field(default=None, gt=0, description="Learning rate; unset = the optimizer's paper default.")
    label_smoothing: float = Field(default=0.0, ge=0, lt=1, description="Cross-entropy label smoothing (HDGAN: 0.1).")
    class_balance: float = Field(
        default=0.5, ge=0, le=1, description="0 natural frequencies .. 1 every class equally often."
    )
    batch_size: int = Field(default=4096, ge=2, description="Pixels per batch (HDGAN: 65536).")
    batches_per_epoch: int = Field(default=40, ge=1, description="Batches per epoch.")
    max_epochs: int = Field(default=10, ge=1, description="Epochs (HDGAN: 25).")
    patience: int = Field(default=3, ge=0, description="Early-stopping patience on the validation split.")
    window: int | None = Field(
        default=None,
        ge=1,
        description="Sample each batch inside one window of this many px per image (bounds the chunks decoded per "
        "batch; keeps throughput flat as images grow, e.g. 512 at 4096 px). Unset = uniform over all pixels.",
    )
    seed: int = Field(default=0, description="Seeds members and pixel sampling.")


def _labels(annotations: AnnotationsRef) -> tuple[pd.DataFrame, np.ndarray, list[str]]:
    folder = Path(annotations.path)
    group = zarr.open_group(str(folder / "labels.zarr"), mode="r")
    return pd.read_parquet(folder / "index.parquet"), group["labels"], list(group.attrs["classes"])


@dg.asset(
    group_name="labelling",
    code_version=LABELLING_CODE_VERSION,
    kinds={"pytorch", "mlflow"},
    pool="training",
    description="Ensemble of MLP pixel classifiers trained on features streamed from zarr.",
)
def pixel_classifier(
    context: dg.AssetExecutionContext,
    config: ClassifierConfig,
    generated_features: GeneratedFeaturesRef,
    annotations: AnnotationsRef,
    storage: FactoryStorage,
    mlflow_tracking: MlflowTracking,
    torch_device: TorchDevice,
) -> dg.MaterializeResult:
    device = torch_device.device()
    index, labels, classes = _labels(annotations)
    sampler = FeatureSampler(generated_features.path)
    rows = {s: np.flatnonzero(index["split"].to_numpy() == s) for s in ("train", "val")}

    def stream(split: str, fixed: bool, batches: int) -> BatchStream:
        return BatchStream(
            sampler,
            [labels[i] for i in rows[split]],
            rows[split],
            config.batch_size,
            batches,
            len(classes),
            config.class_balance,
            seed=config.seed,
            fixed=fixed,
            window=config.window,
        )

    ensemble = PixelEnsemble(
        EnsembleConfig(
            MLPConfig(sampler.n_features, len(classes), tuple(config.hidden), config.dropout), config.members
        ),
        seed=config.seed,
    )
    train_cfg = MlpTrainConfig(
        optimizer=config.optimizer,
        lr=config.lr,
        label_smoothing=config.label_smoothing,
        max_epochs=config.max_epochs,
        patience=config.patience,
        seed=config.seed,
        device=str(device),
    )
    annotation_version = annotations.content_hash
    # Not resumable (the ensemble trains in one go), so every materialization is a fresh MLflow run.
    run = TrainingRun.open(
        context,
        mlflow_tracking,
        storage.classifier_dir,
        {"config": config.model_dump(), "annotations": annotation_version, "features": generated_features.content_hash},
        CLASSIFIER_MODEL_NAME,
        resume=False,
    )
    start = time.perf_counter()
    with run.mlflow_run("pixel-classifier"):
        import mlflow

        mlflow.set_tag("annotation_version", annotation_version)
        mlflow.log_params({**config.model_dump(), "n_features": sampler.n_features, "classes": ",".join(classes)})

        def on_progress(event) -> None:
            if event.stage == "epoch":
                metrics = {"train_loss": float(np.nanmean(event.train_loss)), "active_members": event.active_members}
                if event.val_loss is not None:
                    metrics["val_loss"] = float(np.nanmean(event.val_loss))
                mlflow.log_metrics(metrics, step=event.epoch)
                context.log.info(f"epoch {event.epoch}: " + ", ".join(f"{k}={v:.4g}" for k, v in metrics.items()))

        val = stream("val", True, max(2, config.batches_per_epoch // 4)) if len(rows["val"]) else None
        result = ensemble.fit(stream("train", False, config.batches_per_epoch), val, train_cfg, on_progress)
        model_file = run.run_dir / "ensemble.pt"
        ensemble.save(model_file, train_cfg)  # written atomically (temp file, then rename)
        run.register(model_file, "classifier")
    ref = run.reference(
        PixelClassifierRef,
        model_file,
        content_hash=annotation_version,
        class_map=annotations.class_map,
        resolution=annotations.resolution,
        blocks=len(sampler.feature_slices),
    )
    return dg.MaterializeResult(
        value=ref,
        metadata={
            **run.version_metadata(),
            "annotation_version": annotation_version,
            "epochs": result.epochs,
            "best_val_loss": float(np.nanmean(result.best_val_loss)) if result.best_val_loss else float("nan"),
            "members": config.members,
            "train_images": len(rows["train"]),
            "seconds": round(time.perf_counter() - start, 2),
            "checkpoint": dg.MetadataValue.path(str(model_file)),
        },
    )


def predict_image(ensemble: PixelEnsemble, sampler: FeatureSampler, row: int) -> np.ndarray:
    """Class probabilities ``[M, H, W, K]`` of one stored image, band by band (bounded memory)."""
    h, w = sampler.output_shape
    bands = []
    for _y0, band in sampler.iter_row_bands(row, band_rows=64):
        rows = band.shape[0]
        bands.append(ensemble.predict_proba(band.reshape(rows * w, -1)).reshape(ensemble.config.n_members, rows, w, -1))
    return np.concatenate(bands, axis=1)


@dg.asset(
    group_name="labelling",
    code_version=LABELLING_CODE_VERSION,
    kinds={"python", "mlflow"},
    description="Pixel accuracy per class, Dice, confusion matrix and overlays on the test split.",
)
def classifier_eval(
    context: dg.AssetExecutionContext,
    pixel_classifier: PixelClassifierRef,
    annotations: AnnotationsRef,
    generated_features: GeneratedFeaturesRef,
    generated_samples: GeneratedSamplesRef,
    mlflow_tracking: MlflowTracking,
) -> dg.MaterializeResult:
    index, labels, classes = _labels(annotations)
    ensemble = PixelEnsemble.load(pixel_classifier.path)
    sampler = FeatureSampler(generated_features.path)
    images = zarr.open_group(generated_samples.path, mode="r")["images"]
    test = np.flatnonzero(index["split"].to_numpy() == "test")
    if len(test) == 0:
        raise ValueError("the annotation split has no test images; set n_test > 0 on `annotations`")
    cm = np.zeros((len(classes), len(classes)), np.int64)
    overlays = []
    from ops.labelling.pixel_classifier import predict_from_proba

    colours = get_class_map(annotations.class_map).colours
    for n, row in enumerate(test):
        pred = predict_from_proba(predict_image(ensemble, sampler, int(row)))
        cm += confusion_matrix(np.asarray(labels[int(row)]), pred, len(classes))
        if n < 4:
            overlays.append(overlay_png(images[int(index["sample_index"].iloc[row])], pred, colours))
    report = segmentation_report(cm, classes)
    cm_png = confusion_matrix_png(cm, classes)
    run_id = pixel_classifier.mlflow_run_id
    with mlflow_tracking.start_run("pixel-classifier", run_id=run_id):
        import mlflow

        mlflow.log_metrics({f"test_{k}": v for k, v in report.items() if np.isfinite(v)})
        mlflow.log_image(png_array(cm_png), artifact_file="eval/confusion_matrix.png")
    mean_dice = report.get("mean_dice", float("nan"))
    return dg.MaterializeResult(
        value=ClassifierEvalRef(path=pixel_classifier.path, mlflow_run_id=run_id, mean_dice=mean_dice),
        metadata={
            "mean_dice": mean_dice,
            "chance_dice": chance_mean_dice(cm),
            "pixel_accuracy": report.get("pixel_accuracy", float("nan")),
            "report": dg.MetadataValue.json({k: round(float(v), 4) for k, v in report.items()}),
            "test_images": len(test),
            "confusion_matrix": png_markdown(cm_png, "confusion matrix"),
            "overlay": png_markdown(overlays[0], "prediction overlay"),
            "mlflow_run_id": run_id,
        },
    )


# ----------------------------------------------------------------------------------------------------------------
# Real tile masks from slide annotations.


class TileAnnotationConfig(dg.Config):
    """QuPath GeoJSON drawn on the slides, rasterized onto the kept tiles."""

    class_map: Literal["demo", "paper"] = Field(
        default="demo", description="Class map: demo (IHC demo classes) or paper (HDGAN kidney)."
    )
    demo_annotator: bool = Field(
        default=False,
        description="DEMO ONLY: for training slides without a GeoJSON, label a few kept tiles with the rule-based "
        "stand-in annotator and write them as a QuPath GeoJSON in slide coordinates (as an expert would deliver).",
    )
    demo_tiles_per_slide: int = Field(default=8, ge=1, description="Tiles per slide the demo annotator labels.")
    min_labelled: float = Field(
        default=0.9, ge=0, le=1, description="Keep a tile when at least this share of its pixels is annotated."
    )
    seed: int = Field(default=0, description="Seeds the demo annotator's tile choice.")


@dg.asset(
    group_name="labelling",
    code_version=TILE_ANNOTATION_CODE_VERSION,
    kinds={"python", "zarr"},
    description="QuPath GeoJSON drawn on the slides, rasterized onto the kept tiles: real image-mask pairs.",
)
def tile_annotations(
    context: dg.AssetExecutionContext,
    config: TileAnnotationConfig,
    training_tiles: TrainingTilesRef,
    storage: FactoryStorage,
) -> dg.MaterializeResult:
    class_map = get_class_map(config.class_map)
    tiles = pd.read_parquet(training_tiles.path)
    inbox = storage.slide_annotation_inbox
    inbox.mkdir(parents=True, exist_ok=True)
    if config.demo_annotator:
        context.log.warning("DEMO: slide annotations are drawn by the rule-based stand-in annotator, not an expert")
        for slide, rows in tiles[tiles["split"] == "train"].groupby("slide"):
            if not (inbox / f"{slide}.geojson").exists():
                write_demo_slide_annotations(
                    rows, inbox / f"{slide}.geojson", class_map, config.demo_tiles_per_slide, seed=config.seed
                )
    files = {p.stem: p for p in sorted(inbox.glob("*.geojson"))}
    strays = sorted(set(files) - set(tiles["slide"]))
    if strays:
        context.log.warning(f"GeoJSON files in {inbox} match no slide with kept tiles and are skipped: {strays}")
    masks, tables = [], []
    for slide, rows in tiles.groupby("slide"):
        if slide not in files:
            continue
        _, slide_path = storage.slide(slide)
        with open_slide(slide_path) as reader:
            size = reader.info.level_dimensions[0]
        polygons = load_slide_annotations(files[slide], class_map.classes, slide_size=size)
        kept_rows, kept_masks = labelled_tiles(rasterize_onto_tiles(polygons, rows), rows, config.min_labelled)
        masks.append(kept_masks)  # filtered per slide, so memory holds the kept tiles, not every candidate
        tables.append(kept_rows)
    if not tables or not sum(len(t) for t in tables):
        raise ValueError(
            f"no kept tile is annotated on at least {config.min_labelled:.0%} of its pixels. Put QuPath GeoJSON "
            f"exports (level-0 pixel coordinates) named <slide key>.geojson into {inbox} (slide keys: "
            f"{sorted(tiles['slide'].unique())}), lower min_labelled, or set demo_annotator for the demo"
        )
    table = pd.concat(tables, ignore_index=True)
    stacked = np.concatenate(masks)
    tmp = temp_dir_beside(storage.tile_annotations_dir)
    write_mask_store(tmp / "masks.zarr", stacked)
    table = table.assign(
        mask_store=str(storage.tile_annotations_dir / "masks.zarr"), mask_index=np.arange(len(table))
    )  # rows of the concatenated store
    table.to_parquet(tmp / "tiles.parquet", index=False)
    replace_dir(tmp, storage.tile_annotations_dir)
    share = shares(stacked, class_map.n_classes)
    # The masks depend on the files, the settings and which tiles were kept: all three make the version (the LDM's
    # run key includes it, so a changed min_labelled never resumes a run trained on another tile set).
    version = content_hash(
        {
            "files": {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in files.values()},
            "config": config.model_dump(),
            "tiles": tile_set_hash(table),
        }
    )
    return dg.MaterializeResult(
        value=TileAnnotationsRef(
            path=str(storage.tile_annotations_dir), content_hash=version, class_map=config.class_map
        ),
        metadata={
            "annotated_tiles": len(table),
            "train_tiles": int((table["split"] == "train").sum()),
            "holdout_tiles": int((table["split"] == "holdout").sum()),
            "slides": sorted(table["slide"].unique().tolist()),
            "class_shares": dg.MetadataValue.json(
                {n: round(float(s), 4) for n, s in zip(class_map.classes, share, strict=True)}
            ),
            "annotation_version": version,
            "path": dg.MetadataValue.path(str(storage.tile_annotations_dir)),
        },
        data_version=dg.DataVersion(version),
    )


# ----------------------------------------------------------------------------------------------------------------
# Quality gates (see assets/gates.py).


class ClassifierDiceGate(dg.Config):
    """Threshold of ``classifier_eval``'s ``dice_above_chance`` gate."""

    min_times_chance: float = Field(
        default=1.0,
        gt=0.0,
        description="Test-split mean Dice must exceed this multiple of chance (the mean Dice of an image-blind "
        "labeller that knows the class shares: 1 / classes present; ops.evaluation.metrics.chance_mean_dice).",
    )


@dg.asset_check(
    asset=classifier_eval,
    blocking=True,
    description="Blocks the chain after a pixel classifier whose labels are no better than guessing by class shares.",
)
def dice_above_chance(context: dg.AssetCheckExecutionContext, config: ClassifierDiceGate) -> dg.AssetCheckResult:
    meta = latest_metadata(context, classifier_eval.key)
    dice, chance = number(meta, "mean_dice", "classifier_eval"), number(meta, "chance_dice", "classifier_eval")
    return gate(
        "mean_dice",
        dice,
        ">",
        "min_mean_dice",
        config.min_times_chance * chance,
        "classifier Dice above chance",
        extra={"chance_dice": chance, "min_times_chance": config.min_times_chance},
    )
