"""The mask-conditioned generator (DISC / GenSeg): real tile masks, a mask bank, an autoencoder and the LDM.

``tile_annotations`` rasterizes QuPath GeoJSON drawn on the slides onto the kept tiles (real image-mask pairs);
``mask_bank`` collects the annotation shapes those masks contain; ``autoencoder`` learns the latent space;
``ldm_model`` learns to denoise latents given a mask. The export then draws masks from the bank (with the class
balance a user asks for) and generates the images that fit them. Heavy artifacts are files under
``$HISTOFACTORY_HOME/ldm`` referenced by path; MLflow run ids travel in metadata.
"""

import dataclasses
import json
import time
from pathlib import Path
from typing import Literal

import dagster as dg
import numpy as np
import pandas as pd
import torch
from pydantic import Field

from assets.gates import gate, latest_metadata, number
from assets.labelling import tile_annotation_class_map, tile_annotations
from assets.lineage import content_hash, package_versions, png_array, png_markdown, tile_set_hash, write_json_atomic
from assets.slides import training_tiles
from ops.common.images import image_grid_png
from ops.common.train_loop import fit_steps
from ops.diffusion.autoencoder import (
    AutoencoderTrainer,
    encode,
    get_autoencoder_config,
    load_autoencoder,
    reconstruction_metrics,
    save_autoencoder,
)
from ops.diffusion.denoiser import LdmTrainConfig, LdmTrainer, get_ldm_config, load_denoiser
from ops.diffusion.mask_bank import MaskBank
from ops.diffusion.samplers import sample_latents, self_distill
from ops.evaluation.metrics import mask_agreement
from ops.export.ldm_route import latents_to_uint8
from ops.gan.trainer import CheckpointError
from ops.labelling.class_maps import get_class_map
from ops.slides.crops import PairCropSampler, TileCropSampler
from resources import FactoryStorage, MlflowTracking, TorchDevice

DIFFUSION_CODE_VERSION = "ldm-1"
LDM_MODEL_NAME = "histofactory-mask-ldm"
AUTOENCODER_MODEL_NAME = "histofactory-autoencoder"


def _annotated_train(storage: FactoryStorage) -> pd.DataFrame:
    table = pd.read_parquet(storage.tile_annotations_dir / "tiles.parquet")
    train = table[table["split"] == "train"]
    if train.empty:
        raise ValueError(
            "tile_annotations has no annotated training tiles (only held-out slides are annotated); "
            "annotate tiles of the training slides"
        )
    return train


# ----------------------------------------------------------------------------------------------------------------
# Mask bank.


class MaskBankConfig(dg.Config):
    """Mask crops from the annotated training tiles, and the shapes in them."""

    resolution: int = Field(default=64, ge=8, description="Mask edge in pixels (the LDM's image resolution).")
    crops: int = Field(default=512, ge=1, description="Mask crops taken from the annotated tiles.")
    min_area: int = Field(default=4, ge=0, description="Shapes smaller than this (pixels) are not kept.")
    seed: int = Field(default=0, description="Seeds the crop positions.")


@dg.asset(
    group_name="diffusion",
    deps=[tile_annotations],
    code_version=DIFFUSION_CODE_VERSION,
    kinds={"numpy"},
    description="Real mask layouts and the annotation shapes in them; new masks are sampled from it.",
)
def mask_bank(
    context: dg.AssetExecutionContext, config: MaskBankConfig, storage: FactoryStorage
) -> dg.MaterializeResult:
    storage.require("tile_annotations")
    train = _annotated_train(storage)
    class_map = get_class_map(tile_annotation_class_map(storage))
    _, masks = PairCropSampler(train, config.resolution, seed=config.seed).batch_uint8(config.crops)
    bank = MaskBank.from_masks(masks, class_map.n_classes, min_area=config.min_area)
    bank.save(storage.ldm_root / "mask_bank.npz")
    preview = bank.sample(np.arange(16))
    per_class = np.bincount(bank.shape_class, minlength=class_map.n_classes)
    return dg.MaterializeResult(
        metadata={
            "masks": len(masks),
            "shapes_per_class": dg.MetadataValue.json(
                {n: int(c) for n, c in zip(class_map.classes, per_class, strict=True)}
            ),
            "base_shares": dg.MetadataValue.json(
                {n: round(float(s), 4) for n, s in zip(class_map.classes, bank.base_shares, strict=True)}
            ),
            "sampled_masks": png_markdown(
                image_grid_png(_colour(preview, class_map.colours), columns=8, scale=2), "masks sampled from the bank"
            ),
            "path": dg.MetadataValue.path(str(storage.ldm_root / "mask_bank.npz")),
        }
    )


def _colour(masks: np.ndarray, colours) -> np.ndarray:
    lut = np.zeros((256, 3), np.uint8)
    lut[: len(colours)] = np.asarray(colours, np.uint8)
    return lut[masks]


# ----------------------------------------------------------------------------------------------------------------
# Autoencoder.


class AutoencoderTrainingConfig(dg.Config):
    """The LDM's first stage (see ``ops.diffusion.autoencoder``)."""

    preset: Literal["demo", "256", "paper"] = Field(
        default="demo", description="Architecture preset: demo (64 px), 256, paper (512 px, KL-f4)."
    )
    kind: str | None = Field(default=None, description="Override the preset's kind: kl (AutoencoderKL) or vq.")
    kimg: float = Field(default=2.0, gt=0, description="Thousands of tile crops to train on (across resumes).")
    batch_size: int = Field(default=16, ge=1, description="Crops per step.")
    lr: float = Field(default=1e-3, gt=0, description="Adam learning rate.")
    kl_weight: float = Field(default=1e-6, ge=0, description="KL weight (LDM: 1e-6).")
    checkpoint_every: int = Field(default=50, ge=1, description="Steps between checkpoints and reconstruction checks.")
    log_every: int = Field(default=10, ge=1, description="Steps between loss logs.")
    eval_images: int = Field(default=32, ge=1, description="Held-out crops the reconstruction metrics use.")
    from_scratch: bool = Field(default=False, description="Ignore the pretrained weights; start from random ones.")
    pretrained: str | None = Field(
        default=None, description="Autoencoder file to fine-tune from; unset = the shipped one for the preset, if any."
    )
    seed: int = Field(default=0, description="Seeds weights and the crop stream.")


@dg.asset(
    group_name="diffusion",
    deps=[training_tiles],
    code_version=DIFFUSION_CODE_VERSION,
    kinds={"pytorch", "mlflow"},
    pool="training",
    description="Autoencoder (diffusers AutoencoderKL / VQModel, factor 4) trained on the kept tiles.",
)
def autoencoder(
    context: dg.AssetExecutionContext,
    config: AutoencoderTrainingConfig,
    storage: FactoryStorage,
    mlflow_tracking: MlflowTracking,
    torch_device: TorchDevice,
) -> dg.MaterializeResult:
    storage.require("training_tiles")
    device = torch_device.device()
    cfg = get_autoencoder_config(config.preset)
    cfg = dataclasses.replace(cfg, kind=config.kind) if config.kind else cfg
    tiles = pd.read_parquet(storage.training_dir / "tiles.parquet")
    train, holdout = tiles[tiles["split"] == "train"], tiles[tiles["split"] == "holdout"]
    run_key = content_hash({"config": config.model_dump(), "tiles": tile_set_hash(tiles)})
    run_dir, checkpoint, state_file, state = _run_files(storage.ldm_root / "autoencoder" / run_key)
    if checkpoint.exists():
        trainer = AutoencoderTrainer.from_checkpoint(checkpoint, device)
        context.log.info(f"resuming autoencoder training from {checkpoint} at step {trainer.step}")
    else:
        trainer = AutoencoderTrainer(cfg, lr=config.lr, kl_weight=config.kl_weight, device=device, seed=config.seed)
        start_from = _pretrained(context, config, storage.pretrained(f"autoencoder_{config.preset}.pt"))
        if start_from:
            model, pre_cfg, _ = load_autoencoder(start_from, device)
            _require_same(pre_cfg, cfg, start_from)
            trainer.model.load_state_dict(model.state_dict())
    resumed_from = trainer.step
    eval_x = TileCropSampler(holdout if len(holdout) else train, cfg.resolution, seed=12345).batch(
        config.eval_images, device
    )
    sampler = TileCropSampler(train, cfg.resolution, seed=config.seed * 1_000_003 + trainer.step)
    tags = {"dagster_run_id": context.run.run_id, "dagster_asset": "autoencoder", "run_key": run_key}
    start = time.perf_counter()
    with mlflow_tracking.start_run(
        f"autoencoder-{config.preset}-{run_key[:8]}", tags, state.get("mlflow_run_id")
    ) as run:
        import mlflow

        state["mlflow_run_id"] = run.info.run_id
        run_dir.mkdir(parents=True, exist_ok=True)
        if "init" not in state:
            mlflow.log_params(
                {
                    **config.model_dump(),
                    **{f"ae_{k}": v for k, v in cfg.to_dict().items()},
                    "train_tiles": len(train),
                    "device": str(device),
                }
            )
            state["init"] = reconstruction_metrics(trainer.model, eval_x)
            mlflow.log_metrics({f"init_{k}": v for k, v in state["init"].items()}, step=0)
        state_file.write_text(json.dumps(state))

        def on_checkpoint(t: AutoencoderTrainer) -> None:
            mlflow.log_metrics(
                {f"eval_{k}": v for k, v in reconstruction_metrics(t.model, eval_x).items()}, step=t.step
            )

        fit_steps(
            trainer,
            lambda: (sampler.batch(config.batch_size, device),),
            int(config.kimg * 1000),
            checkpoint,
            config.checkpoint_every,
            config.log_every,
            on_log=lambda step, stats: mlflow.log_metrics(stats, step=step),
            on_checkpoint=on_checkpoint,
            desc="autoencoder",
        )
        final = reconstruction_metrics(trainer.model, eval_x)
        scale = trainer.fit_latent_scale([sampler.batch(config.batch_size, device) for _ in range(4)])
        model_file = save_autoencoder(run_dir / "autoencoder.pt", trainer.model, cfg, scale)
        with torch.no_grad():
            recon = latents_to_uint8(trainer.model, encode(trainer.model, eval_x[:8], scale), scale)
        originals = eval_x[:8].permute(0, 2, 3, 1).add(1).mul(127.5).round().clamp(0, 255).byte().cpu().numpy()
        grid = image_grid_png(np.concatenate([originals, recon]), columns=8, scale=2)
        mlflow.log_metrics({**{f"final_{k}": v for k, v in final.items()}, "latent_scale": scale}, step=trainer.step)
        mlflow.log_image(png_array(grid), artifact_file="reconstructions.png")
        mlflow.log_artifact(str(model_file), "model")
        version = mlflow_tracking.register(AUTOENCODER_MODEL_NAME, run.info.run_id, "model")
    current = {
        "path": str(model_file),
        "run_key": run_key,
        "mlflow_run_id": state["mlflow_run_id"],
        "model_version": version,
        "preset": config.preset,
        "resolution": cfg.resolution,
        "factor": cfg.factor,
        "latent_channels": cfg.latent_channels,
        "latent_scale": scale,
        "step": trainer.step,
    }
    write_json_atomic(storage.ldm_root / "autoencoder.json", current)
    return dg.MaterializeResult(
        metadata={
            "mlflow_run_id": state["mlflow_run_id"],
            "model_version": f"{AUTOENCODER_MODEL_NAME}/{version}",
            "psnr_db": final["psnr"],
            "psnr_db_at_init": state["init"]["psnr"],
            "mse": final["mse"],
            "latent_scale": scale,
            "latent_shape": dg.MetadataValue.json([cfg.latent_channels, cfg.latent_resolution, cfg.latent_resolution]),
            "step": trainer.step,
            "resumed_from_step": resumed_from,
            "train_seconds": round(time.perf_counter() - start, 1),
            "reconstructions": png_markdown(grid, "held-out crops (top) and reconstructions (bottom)"),
            "path": dg.MetadataValue.path(str(model_file)),
        },
        data_version=dg.DataVersion(f"{run_key}-{trainer.step}"),
    )


# ----------------------------------------------------------------------------------------------------------------
# The mask-conditioned LDM.


class LdmTrainingConfig(dg.Config):
    """The denoiser (see ``ops.diffusion.denoiser``) and how it is previewed."""

    preset: Literal["demo", "256", "paper"] = Field(
        default="demo", description="Architecture preset: demo, 256, paper (match the autoencoder)."
    )
    conditioning: Literal["concat", "cross_attention"] = Field(
        default="concat", description="Mask conditioning: concat or cross_attention."
    )
    kimg: float = Field(default=6.0, gt=0, description="Thousands of image-mask crops to train on (across resumes).")
    batch_size: int = Field(default=32, ge=1, description="Crops per step.")
    lr: float = Field(default=5e-4, gt=0, description="AdamW learning rate after warm-up.")
    warmup_steps: int = Field(default=50, ge=0, description="Linear learning-rate warm-up steps.")
    ema_decay: float = Field(default=0.995, ge=0, lt=1, description="EMA decay of the weights sampled from; 0 = off.")
    cond_dropout: float = Field(
        default=0.1, ge=0, lt=1, description="Share of masks dropped (classifier-free guidance)."
    )
    augment: bool = Field(default=True, description="Random flips / 90-degree rotations of image-mask crops.")
    checkpoint_every: int = Field(default=100, ge=1, description="Steps between checkpoints and preview grids.")
    log_every: int = Field(default=10, ge=1, description="Steps between loss logs.")
    preview_steps: int = Field(default=20, ge=1, description="DDIM steps of the preview samples.")
    preview_images: int = Field(default=32, ge=1, description="Preview samples (mask agreement is measured on them).")
    guidance: float = Field(default=1.0, ge=0, description="Classifier-free guidance scale of the previews (1 = off).")
    self_distill_pairs: int = Field(
        default=0, ge=0, description="DISC self-distillation: SC samples to fine-tune on; 0 = off."
    )
    self_distill_steps: int = Field(default=0, ge=0, description="Self-distillation fine-tuning steps.")
    from_scratch: bool = Field(default=False, description="Ignore the pretrained weights; start from random ones.")
    pretrained: str | None = Field(
        default=None,
        description="LDM checkpoint to fine-tune from; unset = the shipped one for the preset and "
        "conditioning, if any (its autoencoder must be the shipped one too: the latent spaces must match).",
    )
    seed: int = Field(default=0, description="Seeds weights, crops and noise.")


@dg.asset(
    group_name="diffusion",
    deps=[autoencoder, tile_annotations, mask_bank],
    code_version=DIFFUSION_CODE_VERSION,
    kinds={"pytorch", "mlflow"},
    pool="training",
    description="Mask-conditioned latent diffusion model (diffusers UNet, DDPM T=1000), resumable, in MLflow.",
)
def ldm_model(
    context: dg.AssetExecutionContext,
    config: LdmTrainingConfig,
    storage: FactoryStorage,
    mlflow_tracking: MlflowTracking,
    torch_device: TorchDevice,
) -> dg.MaterializeResult:
    storage.require("autoencoder", "tile_annotations", "mask_bank")
    device = torch_device.device()
    ae_info = json.loads((storage.ldm_root / "autoencoder.json").read_text())
    ae, ae_cfg, scale = load_autoencoder(ae_info["path"], device)
    class_map = get_class_map(tile_annotation_class_map(storage))
    bank = MaskBank.load(storage.ldm_root / "mask_bank.npz")
    cfg = get_ldm_config(
        config.preset,
        class_map.n_classes,
        conditioning=config.conditioning,
        latent_channels=ae_cfg.latent_channels,
        latent_size=ae_cfg.latent_resolution,
        resolution=ae_cfg.resolution,
        cond_dropout=config.cond_dropout,
    )
    if bank.resolution != cfg.resolution:
        raise ValueError(
            f"mask_bank holds {bank.resolution}-px masks but the autoencoder works at {cfg.resolution} "
            f"px; set mask_bank's resolution to {cfg.resolution} and rematerialize it"
        )
    train_cfg = LdmTrainConfig(
        batch_size=config.batch_size,
        lr=config.lr,
        warmup_steps=config.warmup_steps,
        ema_decay=config.ema_decay,
        seed=config.seed,
    )
    train = _annotated_train(storage)
    annotation_version = (
        context.instance.get_latest_materialization_event(tile_annotations.key)
        .asset_materialization.metadata["annotation_version"]
        .value
    )
    run_key = content_hash(
        {"config": config.model_dump(), "autoencoder": ae_info["run_key"], "annotations": annotation_version}
    )
    run_dir, checkpoint, state_file, state = _run_files(storage.ldm_root / "model" / run_key)
    if checkpoint.exists():
        trainer = LdmTrainer.from_checkpoint(checkpoint, device)
        context.log.info(f"resuming LDM training from {checkpoint} at step {trainer.step}")
    else:
        trainer = LdmTrainer(cfg, train_cfg, device)
        start_from = _pretrained(context, config, storage.pretrained(f"ldm_{config.preset}_{config.conditioning}.pt"))
        if start_from:
            denoiser = load_denoiser(start_from, device)
            _require_same(denoiser.cfg, cfg, start_from)
            trainer.model.load_state_dict(denoiser.state_dict())
            trainer.ema.load_state_dict(denoiser.state_dict())
    resumed_from = trainer.step
    pairs = PairCropSampler(train, cfg.resolution, seed=config.seed * 1_000_003 + trainer.step, augment=config.augment)

    def next_batch() -> tuple[torch.Tensor, torch.Tensor]:
        x, masks = pairs.batch(config.batch_size, device)
        with torch.no_grad():
            return encode(ae, x, scale), masks

    real_images, real_masks = PairCropSampler(train, cfg.resolution, seed=4242).batch_uint8(128)
    preview_seeds = np.arange(config.preview_images, dtype=np.int64) + 9_000_000
    preview_masks = bank.sample(preview_seeds)

    def preview(t: LdmTrainer) -> tuple[np.ndarray, dict[str, float]]:
        z = sample_latents(
            t.sampling_model,
            torch.from_numpy(preview_masks).long(),
            preview_seeds,
            "ddim",
            config.preview_steps,
            config.guidance,
        )
        images = latents_to_uint8(ae, z, scale)
        return images, mask_agreement(images, preview_masks, real_images, real_masks, class_map.n_classes)

    tags = {"dagster_run_id": context.run.run_id, "dagster_asset": "ldm_model", "run_key": run_key}
    start = time.perf_counter()
    with mlflow_tracking.start_run(
        f"ldm-{config.preset}-{config.conditioning}-{run_key[:8]}", tags, state.get("mlflow_run_id")
    ) as run:
        import mlflow

        state["mlflow_run_id"] = run.info.run_id
        run_dir.mkdir(parents=True, exist_ok=True)
        state_file.write_text(json.dumps(state))
        if resumed_from == 0:
            mlflow.log_params(
                {
                    **config.model_dump(),
                    **{f"ldm_{k}": v for k, v in cfg.to_dict().items()},
                    "annotated_train_tiles": len(train),
                    "autoencoder_run": ae_info["mlflow_run_id"],
                    "device": str(device),
                }
            )

        def on_checkpoint(t: LdmTrainer) -> None:
            images, agreement = preview(t)
            mlflow.log_metrics({f"preview_{k}": v for k, v in agreement.items()}, step=t.step)
            mlflow.log_image(
                png_array(_pair_grid(images[:8], preview_masks[:8], class_map.colours)),
                artifact_file=f"samples/step_{t.step:07d}.png",
            )

        fit_steps(
            trainer,
            next_batch,
            int(config.kimg * 1000),
            checkpoint,
            config.checkpoint_every,
            config.log_every,
            on_log=lambda step, stats: mlflow.log_metrics(stats, step=step),
            on_checkpoint=on_checkpoint,
            desc="LDM",
        )
        distill = {}
        if config.self_distill_pairs and config.self_distill_steps and not state.get("distilled"):
            distill = self_distill(
                trainer,
                bank.sample,
                config.self_distill_pairs,
                config.self_distill_steps,
                config.preview_steps,
                config.guidance,
                on_log=lambda step, stats: mlflow.log_metrics(stats, step=step),
            )
            trainer.save_checkpoint(checkpoint)
            state["distilled"] = True
            state_file.write_text(json.dumps(state))
            mlflow.log_metrics(distill, step=trainer.step)
        images, agreement = preview(trainer)
        grid = _pair_grid(images[:16], preview_masks[:16], class_map.colours)
        mlflow.log_metrics({f"final_{k}": v for k, v in agreement.items()}, step=trainer.step)
        mlflow.log_image(png_array(grid), artifact_file="samples/final.png")
        mlflow.log_dict(cfg.to_dict(), "checkpoint/ldm_config.json")
        mlflow.log_artifact(str(checkpoint), "checkpoint")
        version = mlflow_tracking.register(LDM_MODEL_NAME, run.info.run_id, "checkpoint")
    current = {
        "checkpoint": str(checkpoint),
        "run_key": run_key,
        "mlflow_run_id": state["mlflow_run_id"],
        "model_version": version,
        "preset": config.preset,
        "conditioning": config.conditioning,
        "resolution": cfg.resolution,
        "class_map": class_map.name,
        "step": trainer.step,
        "autoencoder": ae_info["path"],
        "autoencoder_mlflow_run": ae_info["mlflow_run_id"],
        "mask_bank": str(storage.ldm_root / "mask_bank.npz"),
        "annotation_version": annotation_version,
        "train_slide_ids": sorted(train["slide_id"].unique().tolist()),
    }
    write_json_atomic(storage.ldm_root / "current.json", current)
    return dg.MaterializeResult(
        metadata={
            "mlflow_run_id": state["mlflow_run_id"],
            "model_version": f"{LDM_MODEL_NAME}/{version}",
            "conditioning": config.conditioning,
            "mask_agreement": agreement["mask_agreement"],
            "mask_accuracy": agreement["accuracy"],
            "mask_chance": agreement["chance"],
            **({"self_distill_loss": distill["distill_loss"]} if distill else {}),
            "step": trainer.step,
            "resumed_from_step": resumed_from,
            "train_seconds": round(time.perf_counter() - start, 1),
            "samples": png_markdown(grid, "masks from the bank (top) and the images generated from them (bottom)"),
            "checkpoint": dg.MetadataValue.path(str(checkpoint)),
            "package_versions": dg.MetadataValue.json(package_versions()),
        },
        data_version=dg.DataVersion(f"{run_key}-{trainer.step}"),
    )


def _run_files(run_dir: Path) -> tuple[Path, Path, Path, dict]:
    """A training run's folder, checkpoint, state file and state (MLflow run id, baselines) if it was started."""
    state_file = run_dir / "state.json"
    return (
        run_dir,
        run_dir / "checkpoint.pt",
        state_file,
        json.loads(state_file.read_text()) if state_file.exists() else {},
    )


def _pretrained(
    context: dg.AssetExecutionContext, config: AutoencoderTrainingConfig | LdmTrainingConfig, shipped: Path
) -> Path | None:
    """The weights to fine-tune from: the configured file (must exist), else the shipped one, else none."""
    if config.from_scratch:
        return None
    if config.pretrained:
        if not Path(config.pretrained).is_file():
            raise CheckpointError(f"pretrained file {config.pretrained} does not exist; fix the path or unset it")
        return Path(config.pretrained)
    if shipped.is_file():
        context.log.info(f"fine-tuning from the shipped {shipped.name}")
        return shipped
    context.log.info(f"no shipped weights for this preset ({shipped.name}); training from random weights")
    return None


def _require_same(found, expected, path: Path) -> None:
    if found != expected:
        raise CheckpointError(
            f"pretrained file {path} holds a {found} but this run builds a {expected}; pick a "
            "matching preset / class map, or set from_scratch: true"
        )


def _pair_grid(images: np.ndarray, masks: np.ndarray, colours) -> bytes:
    """Rows of coloured masks above the images generated from them."""
    n = len(images)
    columns = min(8, n)
    rows = []
    for i in range(0, n, columns):
        rows += [_colour(masks[i : i + columns], colours), images[i : i + columns]]
    return image_grid_png(np.concatenate(rows), columns=columns, scale=2)


# ----------------------------------------------------------------------------------------------------------------
# Quality gates (see assets/gates.py).


class MaskAgreementGate(dg.Config):
    """Threshold of ``ldm_model``'s ``mask_agreement_above_chance`` gate."""

    min_mask_agreement: float = Field(
        default=1.0,
        gt=0.0,
        description="Preview images must follow their masks better than this multiple of chance (mask_agreement: "
        "accuracy of colour-nearest classes against the own mask / against another image's mask; 1.0 is what an "
        "unconditional generator scores).",
    )


@dg.asset_check(
    asset=ldm_model,
    blocking=True,
    description="Blocks exporting from an LDM whose images ignore their masks (mask agreement not above chance).",
)
def mask_agreement_above_chance(
    context: dg.AssetCheckExecutionContext, config: MaskAgreementGate
) -> dg.AssetCheckResult:
    meta = latest_metadata(context, ldm_model.key)
    return gate(
        "mask_agreement",
        number(meta, "mask_agreement", "ldm_model"),
        ">",
        "min_mask_agreement",
        config.min_mask_agreement,
        "LDM images follow their masks",
        extra={
            "mask_accuracy": number(meta, "mask_accuracy", "ldm_model"),
            "mask_chance": number(meta, "mask_chance", "ldm_model"),
        },
    )
