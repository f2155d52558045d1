"""GenSeg: a mask-to-image generator trained end to end with the segmenter it serves (``ops.genseg``).

``genseg_model`` trains G (pix2pix on the annotated training tiles, plus an unconditional discriminator on every kept
training tile), the segmenter S (real + generated pairs) and the generator's architecture A (validation loss of S
after one unrolled step, on annotated tiles held apart from S's). The export paints images for masks drawn from
``mask_bank`` and augmented. The run folder, resume state, MLflow run and registration are
``assets.training_run.TrainingRun``, as for the other trained assets.
"""

import time
from typing import Literal

import dagster as dg
import numpy as np
import pandas as pd
from pydantic import Field

from assets.gates import gate, latest_metadata, number
from assets.lineage import package_versions, png_array, png_markdown, tile_set_hash
from assets.training_run import TrainingRun
from ops.common.images import image_grid_png
from ops.common.train_loop import fit_steps
from ops.diffusion.mask_bank import MaskBank
from ops.evaluation.metrics import mask_agreement
from ops.export.genseg_route import synthesize_genseg_pairs
from ops.export.label_scores import fidelity
from ops.genseg.augment import MaskAugmentConfig
from ops.genseg.networks import get_genseg_config, save_generator
from ops.genseg.splits import hold_out_tiles
from ops.genseg.trainer import GenSegTrainConfig, GenSegTrainer
from ops.labelling.class_maps import get_class_map
from ops.labelling.demo_annotator import demo_annotate
from ops.slides.crops import PairCropSampler, TileCropSampler
from resources import FactoryStorage, MlflowTracking, TorchDevice
from resources.references import GenSegModelRef, MaskBankRef, TileAnnotationsRef, TrainingTilesRef

GENSEG_CODE_VERSION = "genseg-1"
GENSEG_MODEL_NAME = "histofactory-genseg"


class GenSegTrainingConfig(dg.Config):
    """GenSeg's multi-level optimisation (see ``ops.genseg.trainer``) and how it is previewed."""

    preset: Literal["demo", "small", "paper"] = Field(
        default="demo", description="Architecture: demo (64 px), small (64 px, half width) or paper (512)."
    )
    kimg: float = Field(default=1.6, gt=0, description="Thousands of labelled pairs to train on (across resumes).")
    batch_size: int = Field(default=8, ge=1, description="Labelled pairs per step (as many generated/val/unlabelled).")
    search: bool = Field(default=True, description="Stage III (architecture search); false = plain pix2pix.")
    hypergrad: Literal["exact", "finite_difference"] = Field(
        default="exact", description="Hypergradient of A: exact double backward, or DARTS's finite difference."
    )
    unlabelled_disc: bool = Field(
        default=True, description="Unconditional discriminator on every kept training tile (appearance)."
    )
    pretrain_steps: int = Field(default=0, ge=0, description="First steps: G against that discriminator only.")
    lambda_l1: float = Field(default=100.0, ge=0, description="pix2pix's L1 weight.")
    gamma: float = Field(default=1.0, ge=0, description="Weight of generated pairs in the segmenter's loss.")
    lr_g: float = Field(default=1e-3, gt=0, description="Adam learning rate of G (pix2pix: 2e-4 for long runs).")
    lr_d: float = Field(default=1e-3, gt=0, description="Adam learning rate of the discriminators.")
    lr_a: float = Field(default=3e-3, gt=0, description="Adam learning rate of the architecture parameters.")
    val_share: float = Field(
        default=0.25, gt=0, lt=1, description="Share of annotated training tiles held apart for the validation loss."
    )
    scale_min: float = Field(default=0.8, gt=0, description="Mask augmentation: smallest zoom.")
    scale_max: float = Field(default=1.25, gt=0, description="Mask augmentation: largest zoom.")
    from_scratch: bool = Field(default=False, description="Ignore the shipped weights; start from random ones.")
    pretrained: str | None = Field(
        default=None, description="Weights file to fine-tune from (export_pretrained_genseg); default: the shipped one."
    )
    continue_training: bool = Field(
        default=False, description="Extend the latest run of this config to the new kimg instead of starting anew."
    )
    checkpoint_every: int = Field(default=50, ge=1, description="Steps between checkpoints and previews.")
    log_every: int = Field(default=10, ge=1, description="Steps between loss and architecture-weight logs.")
    preview_images: int = Field(default=16, ge=2, description="Preview pairs (fidelity and mask agreement).")
    seed: int = Field(default=0, description="Seeds weights, crops, noise and augmentation.")


@dg.asset(
    group_name="genseg",
    code_version=GENSEG_CODE_VERSION,
    kinds={"pytorch", "mlflow"},
    pool="training",
    description="GenSeg mask-to-image generator (searchable U-Net, PatchGAN) trained with its segmenter; resumable.",
)
def genseg_model(
    context: dg.AssetExecutionContext,
    config: GenSegTrainingConfig,
    training_tiles: TrainingTilesRef,
    tile_annotations: TileAnnotationsRef,
    mask_bank: MaskBankRef,
    storage: FactoryStorage,
    mlflow_tracking: MlflowTracking,
    torch_device: TorchDevice,
) -> dg.MaterializeResult:
    device = torch_device.device()
    class_map = get_class_map(tile_annotations.class_map)
    cfg = get_genseg_config(config.preset, class_map.n_classes)
    bank = MaskBank.load(mask_bank.path)
    if bank.resolution != cfg.resolution:
        raise ValueError(
            f"mask_bank holds {bank.resolution}-px masks but the GenSeg {config.preset} preset paints "
            f"{cfg.resolution} px; set mask_bank's resolution to {cfg.resolution} and rematerialize it"
        )
    table = pd.read_parquet(tile_annotations.table)
    annotated = table[table["split"] == "train"].reset_index(drop=True)
    seg_idx, val_idx = hold_out_tiles(len(annotated), config.val_share, config.seed)
    tiles = pd.read_parquet(training_tiles.path)
    unlabelled = tiles[tiles["split"] == "train"]
    augment = MaskAugmentConfig(scale_min=config.scale_min, scale_max=config.scale_max)
    train_cfg = GenSegTrainConfig(
        batch_size=config.batch_size,
        lr_g=config.lr_g,
        lr_d=config.lr_d,
        lr_a=config.lr_a,
        lambda_l1=config.lambda_l1,
        gamma=config.gamma,
        search=config.search,
        hypergrad=config.hypergrad,
        unlabelled_disc=config.unlabelled_disc,
        pretrain_steps=config.pretrain_steps,
        seed=config.seed,
    )
    run = TrainingRun.open(
        context,
        mlflow_tracking,
        storage.genseg_root,
        {
            "config": config.model_dump(exclude={"kimg", "continue_training"}),
            "annotations": tile_annotations.content_hash,
            "tiles": tile_set_hash(tiles),
        },
        GENSEG_MODEL_NAME,
        length={"kimg": config.kimg},
        continue_training=config.continue_training,
    )
    if run.resuming:
        trainer = GenSegTrainer.from_checkpoint(run.checkpoint, device)
        context.log.info(f"resuming GenSeg training from {run.checkpoint} at step {trainer.step}")
    else:
        trainer = GenSegTrainer(cfg, train_cfg, augment, device)
        start_from = run.pretrained(config.from_scratch, config.pretrained, f"genseg_{config.preset}.pt")
        if start_from:
            trainer.load_pretrained(start_from)
    resumed_from = trainer.step
    stream = config.seed * 1_000_003 + trainer.step  # the batch streams continue where the checkpoint stopped
    pairs = PairCropSampler(annotated.iloc[seg_idx], cfg.resolution, seed=stream, augment=True)
    val_pairs = PairCropSampler(annotated.iloc[val_idx], cfg.resolution, seed=stream + 1)
    tile_crops = TileCropSampler(unlabelled, cfg.resolution, seed=stream + 2)

    def next_batch() -> tuple:
        b = config.batch_size
        return (*pairs.batch(b, device), *val_pairs.batch(b, device), tile_crops.batch(b, device))

    real_images, real_masks = PairCropSampler(annotated, cfg.resolution, seed=4242).batch_uint8(128)
    preview_seeds = np.arange(config.preview_images, dtype=np.int64) + 9_000_000
    stand_in = class_map.name == "demo"

    def preview(t: GenSegTrainer) -> tuple[np.ndarray, np.ndarray, np.ndarray | None, dict[str, float]]:
        made = synthesize_genseg_pairs(t.generator.eval(), bank, preview_seeds, augment)
        scores = mask_agreement(made.images, made.masks, real_images, real_masks, class_map.n_classes)
        labels = None
        if stand_in:  # DEMO ONLY: the rule-based stand-in annotator labels the generated images
            labels = np.stack([demo_annotate(img) for img in made.images])
            mean, _ = fidelity(made.images, made.masks, lambda _: labels, class_map.n_classes)
            scores["fidelity"] = float(np.nanmean(mean))
        return made.images, made.masks, labels, scores

    start = time.perf_counter()
    with run.mlflow_run(f"genseg-{config.preset}{'' if config.search else '-nosearch'}"):
        import mlflow

        if resumed_from == 0:
            mlflow.log_params(
                {
                    **config.model_dump(),
                    **{f"arch_{k}": v for k, v in cfg.to_dict().items()},
                    "seg_tiles": len(seg_idx),
                    "val_tiles": len(val_idx),
                    "unlabelled_tiles": len(unlabelled),
                    "device": str(device),
                }
            )

        def on_log(step: int, stats: dict[str, float]) -> None:
            arch = {
                f"arch/{cell}/{op}": w for cell, ws in trainer.generator.arch_weights().items() for op, w in ws.items()
            }
            mlflow.log_metrics({**stats, **arch}, step=step)

        def on_checkpoint(t: GenSegTrainer) -> None:
            images, masks, labels, scores = preview(t)
            mlflow.log_metrics({f"preview_{k}": v for k, v in scores.items()}, step=t.step)
            grid = _triplet_grid(images[:8], masks[:8], labels[:8] if labels is not None else None, class_map.colours)
            mlflow.log_image(png_array(grid), artifact_file=f"samples/step_{t.step:07d}.png")

        fit_steps(
            trainer,
            next_batch,
            int(config.kimg * 1000),
            run.checkpoint,
            config.checkpoint_every,
            config.log_every,
            on_log=on_log,
            on_checkpoint=on_checkpoint,
            desc="GenSeg",
        )
        images, masks, labels, scores = preview(trainer)
        grid = _triplet_grid(images, masks, labels, class_map.colours)
        mlflow.log_metrics({f"final_{k}": v for k, v in scores.items()}, step=trainer.step)
        mlflow.log_image(png_array(grid), artifact_file="samples/final.png")
        mlflow.log_dict(trainer.generator.arch_weights(), "architecture_weights.json")
        provenance = run.record_provenance(
            "GenSeg trainer checkpoint of the genseg_model asset",
            config.model_dump(),
            trainer,
            resumed_from,
            time.perf_counter() - start,
        )
        mlflow.log_artifact(str(provenance), "checkpoint")
        model_file = save_generator(
            run.run_dir / "generator.pt",
            trainer.generator,
            {"augment": augment.to_dict(), "step": trainer.step, "search": config.search},
        )
        run.register(model_file, "model")
    ref = run.reference(
        GenSegModelRef,
        model_file,
        resolution=cfg.resolution,
        class_map=class_map.name,
        step=trainer.step,
        search=config.search,
        mask_bank=mask_bank.path,
        annotation_version=tile_annotations.content_hash,
        train_slide_ids=sorted(set(annotated["slide_id"]) | set(unlabelled["slide_id"])),
    )
    return dg.MaterializeResult(
        value=ref,
        metadata={
            **run.version_metadata(),
            "search": config.search,
            "mask_agreement": scores["mask_agreement"],
            **({"fidelity": scores["fidelity"]} if "fidelity" in scores else {}),
            "architecture": dg.MetadataValue.json(
                {c: max(ws, key=ws.get) for c, ws in trainer.generator.arch_weights().items()}
            ),
            "seg_tiles": len(seg_idx),
            "val_tiles": len(val_idx),
            "step": trainer.step,
            "resumed_from_step": resumed_from,
            "train_seconds": round(time.perf_counter() - start, 1),
            "samples": png_markdown(grid, "masks (top), generated images, stand-in labels of the images (bottom)"),
            "path": dg.MetadataValue.path(str(model_file)),
            "package_versions": dg.MetadataValue.json(package_versions()),
        },
        data_version=dg.DataVersion(f"{run.run_key}-{trainer.step}"),
    )


def _colour(masks: np.ndarray, colours) -> np.ndarray:
    lut = np.zeros((256, 3), np.uint8)
    lut[: len(colours)] = np.asarray(colours, np.uint8)
    return lut[masks]


def _triplet_grid(images: np.ndarray, masks: np.ndarray, labels: np.ndarray | None, colours) -> bytes:
    """Rows of coloured masks, the images generated from them and (demo) the stand-in's labels of those images."""
    columns, rows = min(8, len(images)), []
    for i in range(0, len(images), columns):
        rows += [_colour(masks[i : i + columns], colours), images[i : i + columns]]
        if labels is not None:
            rows.append(_colour(labels[i : i + columns], colours))
    return image_grid_png(np.concatenate(rows), columns=columns, scale=2)


# ----------------------------------------------------------------------------------------------------------------
# Quality gates (see assets/gates.py).


class GenSegAgreementGate(dg.Config):
    """Threshold of ``genseg_model``'s ``genseg_follows_masks`` gate."""

    min_mask_agreement: float = Field(
        default=1.0,
        gt=0.0,
        description="Preview images must follow their masks better than this multiple of chance (1.0 = what an "
        "image that ignores its mask scores; see ops.evaluation.metrics.mask_agreement).",
    )


@dg.asset_check(
    asset=genseg_model,
    blocking=True,
    description="Blocks exporting from a GenSeg generator whose images ignore their masks.",
)
def genseg_follows_masks(context: dg.AssetCheckExecutionContext, config: GenSegAgreementGate) -> dg.AssetCheckResult:
    meta = latest_metadata(context, genseg_model.key)
    return gate(
        "mask_agreement",
        number(meta, "mask_agreement", "genseg_model"),
        ">",
        "min_mask_agreement",
        config.min_mask_agreement,
        "GenSeg images follow their masks",
    )
