"""The mask-conditioned generator (DISC / GenSeg): real tile masks, a mask bank, an autoencoder and the LDM.

``tile_annotations`` rasterizes QuPath GeoJSON drawn on the slides onto the kept tiles (real image-mask pairs);
``mask_bank`` collects the annotation shapes those masks contain; ``autoencoder`` learns the latent space;
``ldm_model`` learns to denoise latents given a mask. The export then draws masks from the bank (with the class
balance a user asks for) and generates the images that fit them. Heavy artifacts are files under
``$HISTOFACTORY_HOME/ldm``; each asset hands on a typed reference to them (``resources.references``). The run
folder, resume state, pretrained weights, MLflow run and registration are ``assets.training_run.TrainingRun``.
"""

import dataclasses
import time
from pathlib import Path
from typing import Literal

import dagster as dg
import numpy as np
import pandas as pd
import torch
from pydantic import Field

from assets.gates import gate, latest_metadata, number
from assets.lineage import package_versions, png_array, png_markdown, tile_set_hash
from assets.training_run import TrainingRun
from ops.common.file_io import CheckpointError
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
from ops.diffusion.denoiser import (
    LdmConfig,
    LdmTrainConfig,
    LdmTrainer,
    get_ldm_config,
    load_denoiser,
    with_unlabelled,
)
from ops.diffusion.distill import DiscBatches, SeparatedLatentSet
from ops.diffusion.mask_bank import MaskBank
from ops.diffusion.samplers import sample_latents
from ops.evaluation.metrics import mask_agreement
from ops.export.ldm_route import latents_to_uint8
from ops.labelling.class_maps import get_class_map
from ops.slides.crops import PairCropSampler, TileCropSampler
from resources import FactoryStorage, MlflowTracking, TorchDevice
from resources.references import AutoencoderRef, LdmModelRef, MaskBankRef, TileAnnotationsRef, TrainingTilesRef

DIFFUSION_CODE_VERSION = "ldm-1"
LDM_CODE_VERSION = "ldm-2"  # unlabelled tiles through the null slot, DISC fine-tune, continue_training, provenance
LDM_MODEL_NAME = "histofactory-mask-ldm"
AUTOENCODER_MODEL_NAME = "histofactory-autoencoder"


def _annotated_train(tile_annotations: TileAnnotationsRef) -> pd.DataFrame:
    table = pd.read_parquet(tile_annotations.table)
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
    code_version=DIFFUSION_CODE_VERSION,
    kinds={"numpy"},
    description="Real mask layouts and the annotation shapes in them; new masks are sampled from it.",
)
def mask_bank(
    context: dg.AssetExecutionContext,
    config: MaskBankConfig,
    tile_annotations: TileAnnotationsRef,
    storage: FactoryStorage,
) -> dg.MaterializeResult:
    train = _annotated_train(tile_annotations)
    class_map = get_class_map(tile_annotations.class_map)
    _, masks = PairCropSampler(train, config.resolution, seed=config.seed).batch_uint8(config.crops)
    bank = MaskBank.from_masks(masks, class_map.n_classes, min_area=config.min_area)
    bank_file = storage.ldm_root / "mask_bank.npz"
    bank.save(bank_file)
    preview = bank.sample(np.arange(16))
    per_class = np.bincount(bank.shape_class, minlength=class_map.n_classes)
    return dg.MaterializeResult(
        value=MaskBankRef(
            path=str(bank_file),
            resolution=config.resolution,
            class_map=class_map.name,
            content_hash=tile_annotations.content_hash,
        ),
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
            "path": dg.MetadataValue.path(str(bank_file)),
        },
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
    continue_training: bool = Field(
        default=False, description="Extend the latest run of this config to the new kimg instead of starting anew."
    )
    eval_images: int = Field(default=32, ge=1, description="Held-out crops the reconstruction metrics use.")
    from_scratch: bool = Field(default=False, description="Ignore the pretrained weights; start from random ones.")
    pretrained: str | None = Field(
        default=None, description="Autoencoder file to fine-tune from; unset = the shipped one for the preset, if any."
    )
    seed: int = Field(default=0, description="Seeds weights and the crop stream.")


@dg.asset(
    group_name="diffusion",
    code_version=DIFFUSION_CODE_VERSION,
    kinds={"pytorch", "mlflow"},
    pool="training",
    description="Autoencoder (diffusers AutoencoderKL / VQModel, factor 4) trained on the kept tiles.",
)
def autoencoder(
    context: dg.AssetExecutionContext,
    config: AutoencoderTrainingConfig,
    training_tiles: TrainingTilesRef,
    storage: FactoryStorage,
    mlflow_tracking: MlflowTracking,
    torch_device: TorchDevice,
) -> dg.MaterializeResult:
    device = torch_device.device()
    cfg = get_autoencoder_config(config.preset)
    cfg = dataclasses.replace(cfg, kind=config.kind) if config.kind else cfg
    tiles = pd.read_parquet(training_tiles.path)
    train, holdout = tiles[tiles["split"] == "train"], tiles[tiles["split"] == "holdout"]
    run = TrainingRun.open(
        context,
        mlflow_tracking,
        storage.ldm_root / "autoencoder",
        {"config": config.model_dump(exclude={"kimg", "continue_training"}), "tiles": tile_set_hash(tiles)},
        AUTOENCODER_MODEL_NAME,
        length={"kimg": config.kimg},
        continue_training=config.continue_training,
    )
    if run.resuming:
        trainer = AutoencoderTrainer.from_checkpoint(run.checkpoint, device)
        context.log.info(f"resuming autoencoder training from {run.checkpoint} at step {trainer.step}")
    else:
        trainer = AutoencoderTrainer(cfg, lr=config.lr, kl_weight=config.kl_weight, device=device, seed=config.seed)
        start_from = run.pretrained(config.from_scratch, config.pretrained, f"autoencoder_{config.preset}.pt")
        if start_from:
            model, pre_cfg, _ = load_autoencoder(start_from, device)
            _require_same(pre_cfg, cfg, start_from)
            trainer.model.load_state_dict(model.state_dict())
    resumed_from = trainer.step
    eval_x = TileCropSampler(holdout if len(holdout) else train, cfg.resolution, seed=12345).batch(
        config.eval_images, device
    )
    sampler = TileCropSampler(train, cfg.resolution, seed=config.seed * 1_000_003 + trainer.step)
    start = time.perf_counter()
    with run.mlflow_run(f"autoencoder-{config.preset}"):
        import mlflow

        if "init" not in run.state:
            mlflow.log_params(
                {
                    **config.model_dump(),
                    **{f"ae_{k}": v for k, v in cfg.to_dict().items()},
                    "train_tiles": len(train),
                    "device": str(device),
                }
            )
            run.state["init"] = reconstruction_metrics(trainer.model, eval_x)
            mlflow.log_metrics({f"init_{k}": v for k, v in run.state["init"].items()}, step=0)
            run.save_state()

        def on_checkpoint(t: AutoencoderTrainer) -> None:
            mlflow.log_metrics(
                {f"eval_{k}": v for k, v in reconstruction_metrics(t.model, eval_x).items()}, step=t.step
            )

        fit_steps(
            trainer,
            lambda: (sampler.batch(config.batch_size, device),),
            int(config.kimg * 1000),
            run.checkpoint,
            config.checkpoint_every,
            config.log_every,
            on_log=lambda step, stats: mlflow.log_metrics(stats, step=step),
            on_checkpoint=on_checkpoint,
            desc="autoencoder",
        )
        final = reconstruction_metrics(trainer.model, eval_x)
        scale = trainer.fit_latent_scale([sampler.batch(config.batch_size, device) for _ in range(4)])
        model_file = save_autoencoder(run.run_dir / "autoencoder.pt", trainer.model, cfg, scale)
        with torch.no_grad():
            recon = latents_to_uint8(trainer.model, encode(trainer.model, eval_x[:8], scale), scale)
        originals = eval_x[:8].permute(0, 2, 3, 1).add(1).mul(127.5).round().clamp(0, 255).byte().cpu().numpy()
        grid = image_grid_png(np.concatenate([originals, recon]), columns=8, scale=2)
        mlflow.log_metrics({**{f"final_{k}": v for k, v in final.items()}, "latent_scale": scale}, step=trainer.step)
        mlflow.log_image(png_array(grid), artifact_file="reconstructions.png")
        run.register(model_file, "model")
    ref = run.reference(AutoencoderRef, model_file, resolution=cfg.resolution, latent_scale=scale, step=trainer.step)
    return dg.MaterializeResult(
        value=ref,
        metadata={
            **run.version_metadata(),
            "psnr_db": final["psnr"],
            "psnr_db_at_init": run.state["init"]["psnr"],
            "mse": final["mse"],
            "latent_scale": scale,
            "latent_shape": dg.MetadataValue.json([cfg.latent_channels, cfg.latent_resolution, cfg.latent_resolution]),
            "step": trainer.step,
            "resumed_from_step": resumed_from,
            "train_seconds": round(time.perf_counter() - start, 1),
            "reconstructions": png_markdown(grid, "held-out crops (top) and reconstructions (bottom)"),
            "path": dg.MetadataValue.path(str(model_file)),
        },
        data_version=dg.DataVersion(f"{run.run_key}-{trainer.step}"),
    )


# ----------------------------------------------------------------------------------------------------------------
# The mask-conditioned LDM.


class LdmTrainingConfig(dg.Config):
    """The denoiser (see ``ops.diffusion.denoiser``), what it trains on, DISC's fine-tune, and how it is previewed."""

    preset: Literal["demo", "256", "paper"] = Field(
        default="demo", description="Architecture preset: demo, 256, paper (match the autoencoder)."
    )
    conditioning: Literal["concat", "cross_attention"] = Field(
        default="concat", description="Mask conditioning: concat or cross_attention."
    )
    kimg: float = Field(default=6.0, gt=0, description="Thousands of image-mask crops to train on (across resumes).")
    continue_training: bool = Field(
        default=False,
        description="Extend the latest finished run of this config (any kimg) to this kimg: same folder, "
        "checkpoint and MLflow run, instead of a new run. Not after its DISC fine-tune has started.",
    )
    batch_size: int = Field(default=32, ge=1, description="Crops per step (annotated and unlabelled together).")
    unlabelled_share: float = Field(
        default=0.5,
        ge=0,
        lt=1,
        description="Share of each batch cut from every kept tissue tile of the training slides and trained through "
        "the unconditional (null-mask) slot, so unlabelled tissue teaches appearance (DiffInfinite); the rest are "
        "annotated tiles through the mask slot. 0 = annotated tiles only.",
    )
    lr: float = Field(default=5e-4, gt=0, description="AdamW learning rate after warm-up.")
    warmup_steps: int = Field(default=50, ge=0, description="Linear learning-rate warm-up steps.")
    ema_decay: float = Field(default=0.995, ge=0, lt=1, description="EMA decay of the weights sampled from; 0 = off.")
    cond_dropout: float = Field(
        default=0.1, ge=0, lt=1, description="Share of annotated masks dropped (classifier-free guidance)."
    )
    augment: bool = Field(default=True, description="Random flips / 90-degree rotations of image-mask crops.")
    distill: Literal["none", "disc", "disc_cotrain"] = Field(
        default="none",
        description="After training, DISC's self-distillation (ops.diffusion.distill): disc fine-tunes on separated "
        "latents fused under random bank masks (SD-DISC); disc_cotrain averages that loss with the ordinary loss on "
        "real tiles (SD-DISC-CoTrain); none skips it.",
    )
    distill_seeds: int = Field(
        default=64, ge=1, description="DISC: seeds whose separated latents (one per class) are stored (paper: 20,000)."
    )
    distill_steps: int = Field(default=100, ge=1, description="DISC: fine-tuning steps on fused latents.")
    distill_ddim_steps: int = Field(default=20, ge=1, description="DISC: DDIM steps of each separated trajectory.")
    checkpoint_every: int = Field(default=100, ge=1, description="Steps between checkpoints and preview grids.")
    log_every: int = Field(default=10, ge=1, description="Steps between loss logs.")
    preview_steps: int = Field(default=20, ge=1, description="DDIM steps of the preview samples.")
    preview_images: int = Field(default=32, ge=1, description="Preview samples (mask agreement is measured on them).")
    guidance: float = Field(
        default=1.0, ge=0, description="Classifier-free guidance scale of previews and DISC trajectories (1 = off)."
    )
    from_scratch: bool = Field(default=False, description="Ignore the pretrained weights; start from random ones.")
    pretrained: str | None = Field(
        default=None,
        description="LDM checkpoint to fine-tune from; unset = the shipped one for the preset and "
        "conditioning, if any (its autoencoder must be the shipped one too: the latent spaces must match).",
    )
    seed: int = Field(default=0, description="Seeds weights, crops and noise.")


def _ldm_trainer(config: LdmTrainingConfig, cfg: LdmConfig, run: TrainingRun, device: torch.device, log) -> LdmTrainer:
    """The trainer: resumed from the run's checkpoint, else new and started from the pretrained weights."""
    if run.resuming:
        trainer = LdmTrainer.from_checkpoint(run.checkpoint, device)
        log.info(f"resuming LDM training from {run.checkpoint} at step {trainer.step}")
        base = run.state.get("base_images")
        if base is not None and int(config.kimg * 1000) > base:
            raise ValueError(
                f"ldm_model: run {run.run_dir} finished its base training at {base / 1000:g} kimg and has started "
                f"its DISC fine-tune; continue_training to kimg {config.kimg:g} would train the distilled weights "
                f"with the plain loss. Continue the run without distill (distill: none) and distill afterwards, "
                f"or set kimg <= {base / 1000:g}"
            )
        return trainer
    trainer = LdmTrainer(
        cfg,
        LdmTrainConfig(
            batch_size=config.batch_size,
            lr=config.lr,
            warmup_steps=config.warmup_steps,
            ema_decay=config.ema_decay,
            seed=config.seed,
        ),
        device,
    )
    start_from = run.pretrained(config.from_scratch, config.pretrained, f"ldm_{config.preset}_{config.conditioning}.pt")
    if start_from:
        denoiser = load_denoiser(start_from, device)
        _require_same(denoiser.cfg, cfg, start_from)
        trainer.model.load_state_dict(denoiser.state_dict())
        trainer.ema.load_state_dict(denoiser.state_dict())
    return trainer


def _base_batches(
    config: LdmTrainingConfig, annotated: pd.DataFrame, tiles: pd.DataFrame, resolution: int, step: int, ae, scale
):
    """Batches of the ordinary loss: annotated crops (mask slot) beside unlabelled tissue crops (null slot)."""
    unlabelled = min(round(config.batch_size * config.unlabelled_share), config.batch_size - 1)
    labelled = config.batch_size - unlabelled
    seed = config.seed * 1_000_003 + step
    pairs = PairCropSampler(annotated, resolution, seed=seed, augment=config.augment)
    tissue = TileCropSampler(tiles, resolution, seed=seed + 1) if unlabelled else None
    device = next(ae.parameters()).device

    def next_batch() -> tuple[torch.Tensor, torch.Tensor]:
        x, masks = pairs.batch(labelled, device)
        if tissue is not None:
            x = torch.cat([x, tissue.batch(unlabelled, device)])
        with torch.no_grad():
            z = encode(ae, x, scale)
        return with_unlabelled(z[:labelled], masks, z[labelled:]) if tissue is not None else (z, masks)

    return next_batch


def _disc_phase(
    config: LdmTrainingConfig,
    trainer: LdmTrainer,
    run: TrainingRun,
    bank: MaskBank,
    next_batch,
    on_log,
    on_checkpoint,
) -> dict[str, float]:
    """DISC's fine-tune after the base training: store separated latents once, then fine-tune on random fusions."""
    if "base_images" not in run.state:
        run.state["base_images"] = trainer.images_seen
        run.save_state()
    store_file = run.run_dir / "disc_latents.npz"
    if store_file.exists():
        store = SeparatedLatentSet.load(store_file)
    else:
        seeds = 7_000_000 + np.arange(config.distill_seeds, dtype=np.int64)  # apart from previews' and exports'
        store = SeparatedLatentSet.generate(trainer.sampling_model, seeds, config.distill_ddim_steps, config.guidance)
        store.save(store_file)
    cotrain = config.distill == "disc_cotrain"
    disc = DiscBatches(store, bank.sample, config.batch_size, seed=config.seed * 1_000_003 + trainer.step)

    def next_disc() -> tuple:
        z, masks = disc()
        return z, masks, next_batch() if cotrain else None, False

    per_step = config.batch_size * (2 if cotrain else 1)
    losses: list[float] = []

    def log_disc(step: int, stats: dict[str, float]) -> None:
        losses.append(stats["loss"])
        on_log(step, {f"disc_{k}": v for k, v in stats.items()})

    fit_steps(
        trainer,
        next_disc,
        run.state["base_images"] + config.distill_steps * per_step,
        run.checkpoint,
        config.checkpoint_every,
        config.log_every,
        on_log=log_disc,
        on_checkpoint=on_checkpoint,
        desc=f"LDM {config.distill}",
    )
    return {"disc_seeds": len(store.seeds), **({"disc_loss": float(np.mean(losses))} if losses else {})}


@dg.asset(
    group_name="diffusion",
    code_version=LDM_CODE_VERSION,
    kinds={"pytorch", "mlflow"},
    pool="training",
    description="Mask-conditioned latent diffusion model (diffusers UNet, DDPM T=1000) trained on annotated tiles "
    "(mask slot) and all kept training tiles (null slot), optionally DISC-distilled; resumable, in MLflow.",
)
def ldm_model(
    context: dg.AssetExecutionContext,
    config: LdmTrainingConfig,
    autoencoder: AutoencoderRef,
    training_tiles: TrainingTilesRef,
    tile_annotations: TileAnnotationsRef,
    mask_bank: MaskBankRef,
    storage: FactoryStorage,
    mlflow_tracking: MlflowTracking,
    torch_device: TorchDevice,
) -> dg.MaterializeResult:
    device = torch_device.device()
    ae, ae_cfg, scale = load_autoencoder(autoencoder.path, device)
    class_map = get_class_map(tile_annotations.class_map)
    bank = MaskBank.load(mask_bank.path)
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
    train = _annotated_train(tile_annotations)
    tiles = pd.read_parquet(training_tiles.path)
    tissue = tiles[tiles["split"] == "train"]
    annotation_version = tile_annotations.content_hash
    run = TrainingRun.open(
        context,
        mlflow_tracking,
        storage.ldm_root / "model",
        {
            "config": config.model_dump(exclude={"kimg", "continue_training"}),
            "autoencoder": autoencoder.content_hash,
            "annotations": annotation_version,
            "tiles": training_tiles.content_hash,
        },
        LDM_MODEL_NAME,
        length={"kimg": config.kimg},
        continue_training=config.continue_training,
    )
    trainer = _ldm_trainer(config, cfg, run, device, context.log)
    resumed_from = trainer.step
    next_batch = _base_batches(config, train, tissue, cfg.resolution, trainer.step, ae, scale)

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

    start = time.perf_counter()
    with run.mlflow_run(f"ldm-{config.preset}-{config.conditioning}"):
        import mlflow

        if resumed_from == 0:
            mlflow.log_params(
                {
                    **config.model_dump(exclude={"kimg", "continue_training"}),
                    **{f"ldm_{k}": v for k, v in cfg.to_dict().items()},
                    "annotated_train_tiles": len(train),
                    "unlabelled_train_tiles": len(tissue),
                    "autoencoder_run": autoencoder.mlflow_run_id,
                    "device": str(device),
                }
            )
        mlflow.set_tag("kimg", config.kimg)  # a tag, not a param: continue_training raises it within the run

        def on_log(step: int, stats: dict[str, float]) -> None:
            mlflow.log_metrics(stats, step=step)

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
            run.checkpoint,
            config.checkpoint_every,
            config.log_every,
            on_log=on_log,
            on_checkpoint=on_checkpoint,
            desc="LDM",
        )
        distill = (
            _disc_phase(config, trainer, run, bank, next_batch, on_log, on_checkpoint)
            if config.distill != "none"
            else {}
        )
        if distill:
            mlflow.log_metrics(distill, step=trainer.step)
        images, agreement = preview(trainer)
        grid = _pair_grid(images[:16], preview_masks[:16], class_map.colours)
        mlflow.log_metrics({f"final_{k}": v for k, v in agreement.items()}, step=trainer.step)
        mlflow.log_image(png_array(grid), artifact_file="samples/final.png")
        mlflow.log_dict(cfg.to_dict(), "checkpoint/ldm_config.json")
        seconds = time.perf_counter() - start
        provenance = run.record_provenance(
            "mask-conditioned LDM checkpoint of the ldm_model asset",
            config.model_dump(),
            trainer,
            resumed_from,
            seconds,
        )
        mlflow.log_artifact(str(provenance), "checkpoint")
        run.register(run.checkpoint, "checkpoint")
    ref = run.reference(
        LdmModelRef,
        run.checkpoint,
        conditioning=config.conditioning,
        resolution=cfg.resolution,
        class_map=class_map.name,
        step=trainer.step,
        autoencoder=autoencoder.path,
        autoencoder_mlflow_run=autoencoder.mlflow_run_id,
        mask_bank=mask_bank.path,
        annotation_version=annotation_version,
        train_slide_ids=sorted(train["slide_id"].unique().tolist()),
    )
    return dg.MaterializeResult(
        value=ref,
        metadata={
            **run.version_metadata(),
            "conditioning": config.conditioning,
            "mask_agreement": agreement["mask_agreement"],
            "mask_accuracy": agreement["accuracy"],
            "mask_chance": agreement["chance"],
            "unlabelled_share": config.unlabelled_share,
            "unlabelled_train_tiles": len(tissue),
            "distill": config.distill,
            **distill,
            "step": trainer.step,
            "images_seen": trainer.images_seen,
            "resumed_from_step": resumed_from,
            "train_seconds": round(seconds, 1),
            "samples": png_markdown(grid, "masks from the bank (top) and the images generated from them (bottom)"),
            "checkpoint": dg.MetadataValue.path(str(run.checkpoint)),
            "provenance": dg.MetadataValue.path(str(provenance)),
            "package_versions": dg.MetadataValue.json(package_versions()),
        },
        data_version=dg.DataVersion(f"{run.run_key}-{trainer.step}"),
    )


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
