"""Generative assets: the training set over all slides, the StyleGAN2-ADA model, and generated samples.

Checkpoints and sample stores are written through ``FactoryStorage``; each asset hands on a typed reference
(``resources.references``: path, MLflow run id, registered version, step, resolution), never a pickled model.
"""

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
from assets.lineage import content_hash, package_versions, png_array, png_markdown, tile_set_hash
from assets.training_run import TrainingRun
from ops.common.images import image_grid_png
from ops.gan.appearance_match import draw_seeds, reference_histograms
from ops.gan.loop import LoopConfig, fit
from ops.gan.metrics import FidScorer, swd_against
from ops.gan.networks import Generator, get_gan_config
from ops.gan.sampling import generate
from ops.gan.trainer import GanTrainer, TrainConfig, load_generator
from ops.slides.crops import TileCropSampler
from ops.slides.tile_store import replace_dir, temp_dir_beside
from resources import FactoryStorage, MlflowTracking, TorchDevice
from resources.references import GanModelRef, GeneratedSamplesRef, TrainingTilesRef

GENERATIVE_CODE_VERSION = "gan-1"
GAN_MODEL_NAME = "histofactory-stylegan2"


class GanTrainingConfig(dg.Config):
    """StyleGAN2-ADA training (see ``ops.gan.trainer.TrainConfig`` and ``ops.gan.networks.GAN_PRESETS``)."""

    preset: Literal["demo", "256", "paper"] = Field(
        default="demo", description="Architecture preset: demo (64 px), 256, paper (4096 px)."
    )
    kimg: float = Field(default=3.0, gt=0, description="Thousands of real images shown to D (across resumes).")
    batch_size: int = Field(default=16, ge=1, description="Images per step.")
    lr: float = Field(default=0.002, gt=0, description="Adam learning rate of G and D.")
    augment: bool = Field(default=True, description="Adaptive discriminator augmentation (ADA).")
    checkpoint_every: int = Field(default=50, ge=1, description="Steps between checkpoints, sample grids and SWD.")
    log_every: int = Field(default=10, ge=1, description="Steps between loss logs.")
    crop_downsample: int = Field(default=1, ge=1, description="Average-pool crops of resolution*k tile pixels.")
    from_scratch: bool = Field(
        default=False, description="Ignore the pretrained checkpoint and start from random weights."
    )
    pretrained: str | None = Field(
        default=None, description="Checkpoint to fine-tune from; unset = the shipped one for the preset, if any."
    )
    continue_training: bool = Field(
        default=False, description="Extend the latest run of this config to the new kimg instead of starting anew."
    )
    swd_images: int = Field(default=64, ge=2, description="Images per set for SWD (held-out crops vs samples).")
    inception_weights: str | None = Field(
        default=None, description="Local NVlabs inception-2015-12-05.pt: also compute FID (never downloaded)."
    )
    seed: int = Field(default=0, description="Seeds weights, latents and the crop stream.")


def _reference_sets(holdout: pd.DataFrame, n: int, resolution: int, downsample: int) -> tuple[np.ndarray, ...]:
    """Two disjoint-by-seed sets of held-out crops: A is the SWD reference, A vs B the noise floor."""
    a = TileCropSampler(holdout, resolution, downsample, seed=12345).batch_uint8(n)
    b = TileCropSampler(holdout, resolution, downsample, seed=67890).batch_uint8(n)
    return a, b


@dg.asset(
    group_name="gan",
    code_version=GENERATIVE_CODE_VERSION,
    kinds={"pytorch", "mlflow"},
    pool="training",
    description="StyleGAN2-ADA trained on the kept tiles (resumable, logged to MLflow, registered).",
)
def gan_model(
    context: dg.AssetExecutionContext,
    config: GanTrainingConfig,
    training_tiles: TrainingTilesRef,
    mlflow_tracking: MlflowTracking,
    torch_device: TorchDevice,
    storage: FactoryStorage,
) -> dg.MaterializeResult:
    device = torch_device.device()
    gan_cfg = get_gan_config(config.preset)
    train_cfg = TrainConfig(batch_size=config.batch_size, lr=config.lr, augment=config.augment, seed=config.seed)
    tiles = pd.read_parquet(training_tiles.path)
    train, holdout = tiles[tiles["split"] == "train"], tiles[tiles["split"] == "holdout"]
    run = TrainingRun.open(
        context,
        mlflow_tracking,
        storage.gan_root,
        {"config": config.model_dump(exclude={"kimg", "continue_training"}), "tiles": tile_set_hash(tiles)},
        GAN_MODEL_NAME,
        length={"kimg": config.kimg},
        continue_training=config.continue_training,
    )
    if run.resuming:
        trainer = GanTrainer.from_checkpoint(run.checkpoint, device)
        context.log.info(f"resuming GAN training from {run.checkpoint} at step {trainer.step}")
    else:
        trainer = GanTrainer(gan_cfg, train_cfg, device)
        pretrained = run.pretrained(config.from_scratch, config.pretrained, f"gan_{config.preset}.pt")
        if pretrained:
            trainer.load_checkpoint(pretrained)  # weights, optimiser and ADA state; counters restart below
            trainer.step, trainer.images_seen = 0, 0
    resumed_from = trainer.step
    ref_a, ref_b = _reference_sets(
        holdout if len(holdout) else train, config.swd_images, gan_cfg.resolution, config.crop_downsample
    )
    eval_seeds = np.arange(config.swd_images) + 10_000_000
    start = time.perf_counter()
    with run.mlflow_run(f"gan-{config.preset}"):
        import mlflow

        if resumed_from == 0 and not run.state.get("baselines"):
            mlflow.log_params(
                {
                    **config.model_dump(),
                    **{f"gan_{k}": v for k, v in gan_cfg.to_dict().items()},
                    "train_tiles": len(train),
                    "holdout_tiles": len(holdout),
                    "device": str(device),
                }
            )
            torch.manual_seed(config.seed)
            untrained = Generator(gan_cfg).to(device)
            floor = swd_against(ref_a, ref_b)
            base = swd_against(ref_a, generate(untrained, eval_seeds, 1.0, device, batch=32)[2])
            run.state["baselines"] = {"floor": floor.per_level, "untrained": base.per_level}
            mlflow.log_metrics({**floor.to_metadata("swd_floor"), **base.to_metadata("swd_untrained")}, step=0)
            run.save_state()

        def on_log(step: int, stats: dict[str, float]) -> None:
            mlflow.log_metrics({k: float(v) for k, v in stats.items()}, step=step)
            if step % (config.log_every * 10) == 0:
                context.log.info(f"step {step}: " + ", ".join(f"{k}={v:.3g}" for k, v in stats.items()))

        def on_checkpoint(t: GanTrainer) -> None:
            images = generate(t.G_ema, eval_seeds, 1.0, device, batch=32)[2]
            mlflow.log_metrics(swd_against(ref_a, images).to_metadata("swd"), step=t.step)
            mlflow.log_image(
                png_array(image_grid_png(images[:16], columns=4, scale=2)),
                artifact_file=f"samples/step_{t.step:07d}.png",
            )

        loop = LoopConfig(
            int(config.kimg * 1000), config.checkpoint_every, config.log_every, config.crop_downsample, config.seed
        )
        fit(trainer, train, loop, run.checkpoint, on_log, on_checkpoint)
        final_images = generate(trainer.G_ema, eval_seeds, 1.0, device, batch=32)[2]
        swd = swd_against(ref_a, final_images)
        grid = image_grid_png(final_images[:32], columns=8, scale=2)
        mlflow.log_metrics(swd.to_metadata("swd"), step=trainer.step)
        fid = (
            FidScorer(config.inception_weights, device).score(ref_a, final_images) if config.inception_weights else None
        )
        if fid is not None:
            mlflow.log_metric("fid", fid, step=trainer.step)
        mlflow.log_dict(gan_cfg.to_dict(), "checkpoint/gan_config.json")
        run.register(run.checkpoint, "checkpoint")
    seconds = time.perf_counter() - start
    ref = run.reference(
        GanModelRef,
        run.checkpoint,
        run_dir=str(run.run_dir),
        preset=config.preset,
        resolution=gan_cfg.resolution,
        step=trainer.step,
        images_seen=trainer.images_seen,
        train_slide_ids=sorted(train["slide_id"].unique().tolist()),
    )
    baselines = run.state["baselines"]
    floor, untrained = ({int(k): v for k, v in baselines[name].items()} for name in ("floor", "untrained"))
    return dg.MaterializeResult(
        value=ref,
        metadata={
            **run.version_metadata(),
            "sample_grid": png_markdown(grid, "generated samples"),
            "step": trainer.step,
            "images_seen": trainer.images_seen,
            "resumed_from_step": resumed_from,
            "swd_avg": swd.average,
            "swd_floor_ratio": floor_ratio(swd.per_level, floor),
            "untrained_floor_ratio": floor_ratio(untrained, floor),
            "swd_per_level": dg.MetadataValue.json({str(k): v for k, v in swd.per_level.items()}),
            "swd_floor_per_level": dg.MetadataValue.json({str(k): v for k, v in floor.items()}),
            "fid": fid if fid is not None else float("nan"),
            "ada_p": float(trainer.ada.p) if trainer.ada is not None else 0.0,
            "train_seconds": round(seconds, 1),
            "device": str(device),
            "checkpoint": dg.MetadataValue.path(str(run.checkpoint)),
            "package_versions": dg.MetadataValue.json(package_versions()),
        },
        data_version=dg.DataVersion(f"{run.run_key}-{trainer.step}"),
    )


def floor_ratio(swd: dict[int, float], floor: dict[int, float]) -> float:
    """Max over pyramid levels of SWD(samples, held-out) / SWD(held-out A, held-out B); 1.0 = as close as real."""
    return max(swd[k] / max(floor[k], 1e-12) for k in floor)


class SamplesConfig(dg.Config):
    """How many images to generate for annotation, and how."""

    n: int = Field(default=500, ge=1, description="Images to generate (HDGAN: 500).")
    psi: float = Field(default=0.7, ge=0, description="Truncation psi (1 = off).")
    seed_offset: int = Field(
        default=0, ge=0, description="Candidate i has seed seed_offset + i (with match_pool 0: image i)."
    )
    match_pool: int = Field(
        default=0,
        ge=0,
        description="0: the first n seeds (DatasetGAN). k >= 1: generate k * n candidates and keep the n whose colours "
        "match unlabelled training-slide crops, as the export draws its images, so that the images annotators label "
        "show the mix of tissue the export will label.",
    )
    export_for_annotation: list[int] = Field(
        default=[], description="Indices of images to export as PNGs for annotators (QuPath opens them)."
    )


@dg.asset(
    group_name="gan",
    code_version=GENERATIVE_CODE_VERSION,
    kinds={"pytorch", "zarr"},
    description="Generated images with their latents (z, w) and seeds in zarr, plus a contact sheet.",
)
def generated_samples(
    context: dg.AssetExecutionContext,
    config: SamplesConfig,
    gan_model: GanModelRef,
    training_tiles: TrainingTilesRef,
    storage: FactoryStorage,
    torch_device: TorchDevice,
) -> dg.MaterializeResult:
    device = torch_device.device()
    G = load_generator(gan_model.path, device)
    start = time.perf_counter()
    candidates = np.arange(config.n * max(1, config.match_pool), dtype=np.int64) + config.seed_offset
    reference = (
        reference_histograms(pd.read_parquet(training_tiles.path), G.cfg.resolution) if config.match_pool else None
    )
    seeds = draw_seeds(G, candidates, config.n, config.match_pool, config.psi, reference, config.seed_offset)
    z, w, images = generate(G, seeds, config.psi, device)  # one at a time: bit-for-bit regenerable
    tmp = temp_dir_beside(storage.samples_dir)
    group = zarr.open_group(str(tmp / "samples.zarr"), mode="w", zarr_format=3)
    r = images.shape[1]
    group.create_array("images", data=images, chunks=(min(64, len(images)), r, r, 3))
    group.create_array("z", data=z.astype(np.float32))
    group.create_array("w", data=w.astype(np.float32))
    group.create_array("seeds", data=seeds)
    group.attrs.update(
        {
            "psi": config.psi,
            "match_pool": config.match_pool,
            "noise_mode": "const",
            "checkpoint": gan_model.path,
            "mlflow_run_id": gan_model.mlflow_run_id,
            "model_version": gan_model.model_version,
        }
    )
    sheet = image_grid_png(images[:64], columns=8, labels=True, scale=2)
    (tmp / "contact_sheet.png").write_bytes(sheet)
    if config.export_for_annotation:
        export_pngs(images, config.export_for_annotation, tmp / "for_annotation")
    replace_dir(tmp, storage.samples_dir)
    store = storage.samples_dir / "samples.zarr"
    version = content_hash([gan_model.path, gan_model.step, config.model_dump()])
    return dg.MaterializeResult(
        value=GeneratedSamplesRef(
            path=str(store), checkpoint=gan_model.path, n=config.n, resolution=r, content_hash=version
        ),
        metadata={
            "n": config.n,
            "psi": config.psi,
            "match_pool": config.match_pool,
            "resolution": r,
            "contact_sheet": png_markdown(sheet, "generated samples (index labels)"),
            "gan_model_version": gan_model.model_version,
            "seconds": round(time.perf_counter() - start, 2),
            "store": dg.MetadataValue.path(str(store)),
        },
        data_version=dg.DataVersion(version),
    )


def export_pngs(images: np.ndarray, indices: list[int], out_dir: Path) -> list[Path]:
    """Write chosen samples as ``sample_<index>.png`` for annotators."""
    from PIL import Image

    bad = [i for i in indices if not 0 <= i < len(images)]
    if bad:
        raise ValueError(f"export_for_annotation: indices {bad} are outside 0..{len(images) - 1}")
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in indices:
        path = out_dir / f"sample_{i:05d}.png"
        Image.fromarray(images[i]).save(path)
        paths.append(path)
    return paths


# ----------------------------------------------------------------------------------------------------------------
# Quality gates (see assets/gates.py).


class GanSwdGate(dg.Config):
    """Threshold of ``gan_model``'s ``swd_below_untrained`` gate."""

    max_fraction_of_untrained: float = Field(
        default=1.0,
        gt=0.0,
        description="The trained generator's SWD / noise floor must stay below this fraction of the untrained "
        "generator's (1.0: training must at least beat random weights).",
    )


@dg.asset_check(
    asset=gan_model,
    blocking=True,
    description="Blocks sampling from a generator whose samples are no closer to held-out tiles than random "
    "weights' (SWD over the Laplacian pyramid, max over levels, both divided by the held-out noise floor).",
)
def swd_below_untrained(context: dg.AssetCheckExecutionContext, config: GanSwdGate) -> dg.AssetCheckResult:
    meta = latest_metadata(context, gan_model.key)
    trained = number(meta, "swd_floor_ratio", "gan_model")
    untrained = number(meta, "untrained_floor_ratio", "gan_model")
    return gate(
        "swd_floor_ratio",
        trained,
        "<",
        "max_swd_floor_ratio",
        config.max_fraction_of_untrained * untrained,
        "SWD below the untrained generator's",
        extra={"untrained_floor_ratio": untrained, "max_fraction_of_untrained": config.max_fraction_of_untrained},
    )
