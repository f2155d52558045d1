"""The synthetic dataset: image-mask pairs in batches (partitions), filtered by ensemble uncertainty and by a
memorization check, written as a versioned, documented export folder.
"""

import hashlib
import json
import time
from dataclasses import dataclass
from importlib.metadata import version as package_version
from typing import Literal

import dagster as dg
import numpy as np
import pandas as pd
import torch
from pydantic import Field

from assets.gates import gate, latest_metadata, number
from assets.labelling import classifier_eval
from assets.lineage import png_markdown
from ops.common.images import image_grid_png
from ops.diffusion.autoencoder import load_autoencoder
from ops.diffusion.denoiser import load_denoiser
from ops.diffusion.mask_bank import MaskBank, weights_by_name
from ops.evaluation.downstream import LABEL_SCORES_FILE
from ops.evaluation.judge import judge_labeller
from ops.evaluation.segmenter import load_segmenter
from ops.export import cgan_route
from ops.export.cgan_route import CGAN_ROUTE
from ops.export.gan_route import (
    ExportParams,
    SyntheticBatch,
    assemble_manifest,
    sample_id,
    synthesize_on_dask,
    synthesize_seeds,
    uncertain_to_drop,
    write_batch,
)
from ops.export.genseg_route import synthesize_genseg_pairs
from ops.export.label_scores import (
    agreement_correlation,
    below_agreement,
    judge_agreement,
    pair_dice,
    route_summary,
)
from ops.export.ldm_route import synthesize_ldm_pairs
from ops.export.memorization import check_memorization
from ops.federated.training import load_global_generator
from ops.gan.appearance_match import reference_histograms
from ops.gan.trainer import load_generator
from ops.genseg.augment import MaskAugmentConfig
from ops.genseg.networks import generator_meta
from ops.genseg.networks import load_generator as load_genseg_generator
from ops.labelling.class_maps import IGNORE_INDEX, get_class_map
from ops.labelling.demo_annotator import demo_annotate
from ops.labelling.pixel_classifier import PixelEnsemble
from ops.slides.crops import TileCropSampler
from ops.slides.tile_store import replace_dir, temp_dir_beside
from resources import DaskResource, FactoryStorage, TorchDevice
from resources.references import (
    ExportRef,
    FederatedGanRef,
    GanModelRef,
    GenSegModelRef,
    LdmModelRef,
    PixelClassifierRef,
    TrainingTilesRef,
)

# 3: the genseg route; 4: the cgan_federated route (tiles with a class, no mask); 5: colour-matched GAN batches;
# 6: GAN masks leave their most uncertain pixels unlabelled
EXPORT_CODE_VERSION = "export-6"
GENERATORS = ("stylegan2", "ldm", "genseg", CGAN_ROUTE)
MAX_BATCHES = 50
export_batches = dg.StaticPartitionsDefinition([f"{i:03d}" for i in range(MAX_BATCHES)])


class ExportConfig(dg.Config):
    """One batch of the synthetic dataset (see ``ops.export.gan_route.ExportParams``)."""

    batch_size: int = Field(default=100, ge=1, description="Samples per batch; N = batches materialized x batch_size.")
    psi: float = Field(default=0.7, ge=0, description="Truncation psi.")
    match_pool: int = Field(
        default=4,
        ge=0,
        description="stylegan2: generate this many times batch_size candidates and keep those whose colours are "
        "nearest crops of the training slides (the GAN under-generates some tissue, e.g. background); 0 keeps every "
        "seed (DatasetGAN).",
    )
    mode: Literal["mean", "vote"] = Field(
        default="mean", description="Ensemble decision: mean probability or majority vote."
    )
    drop_uncertain: float = Field(default=0.1, ge=0, lt=1, description="Most uncertain fraction of each batch dropped.")
    ignore_uncertain: float = Field(
        default=ExportParams.ignore_uncertain,
        ge=0,
        lt=1,
        description="stylegan2: share of each mask's pixels, those the classifier ensemble disagrees on most, written "
        "as unlabelled (255); 0 labels every pixel (DatasetGAN). 0.25 was chosen on the downstream curve's "
        "validation crops.",
    )
    top_frac: float = Field(
        default=0.1, gt=0, le=1, description="Top fraction of pixels averaged into an image's score."
    )
    copy_quantile: float = Field(
        default=0.01,
        ge=0,
        le=1,
        description="Near-copy threshold: this quantile of training-tile to training-tile NN distances.",
    )
    memorization_bank: int = Field(
        default=1000, ge=1, description="Training crops the memorization check compares with."
    )
    generators: list[str] = Field(
        default=["stylegan2"],
        description="Which generators make the batch: stylegan2 (images labelled by the pixel classifier), "
        "ldm (images generated from masks of the mask bank), genseg (images painted for augmented bank "
        "masks by the GenSeg generator) and/or cgan_federated (tiles of a class from federated_gan, no mask); "
        "each makes batch_size samples.",
    )
    ldm_sampler: Literal["ddim", "sc"] = Field(
        default="ddim", description="LDM sampler: ddim, or sc (DISC's separated conditions)."
    )
    ldm_steps: int = Field(default=20, ge=1, description="LDM DDIM steps (DISC: 200).")
    ldm_guidance: float = Field(default=1.0, ge=0, description="LDM classifier-free guidance scale (1 = off).")
    class_weights: dict[str, float] = Field(
        default={},
        description="LDM and GenSeg masks: class name -> multiple of its pixel share in the real masks, "
        'e.g. {"arteriole": 3.0} for three times as many arteriole pixels.',
    )
    stand_in_fidelity: bool = Field(
        default=False,
        description="DEMO ONLY: score every pair's fidelity (Dice of its mask against the stand-in annotator's labels "
        "of its image); expert data has no such labeller and is scored by the label judge instead.",
    )
    min_agreement: float = Field(
        default=0.0,
        ge=0,
        le=1,
        description="Drop pairs whose fidelity (demo) or judge agreement (expert data) is below this Dice; "
        "0 keeps every pair. Dropped pairs are listed in dropped.parquet with low_agreement=true.",
    )
    agreement_floor: float = Field(
        default=0.3,
        ge=0,
        le=1,
        description="The export's check warns when a route's mean fidelity (or judge agreement) is below this.",
    )


def export_version(lineage: dict, params: ExportParams, config: ExportConfig) -> str:
    """Hash of the upstream versions and the config: a changed GAN, classifier, labels or setting = new folder."""
    payload = json.dumps(
        {"lineage": lineage, "params": params.to_dict(), "config": config.model_dump()}, sort_keys=True
    )
    return hashlib.sha256(payload.encode()).hexdigest()[:12]


def _route_input(ref, asset: str, generator: str):
    """An upstream a chosen route needs: its reference, or the error naming the asset and the fix."""
    if ref is None:
        raise FileNotFoundError(
            f"generators includes {generator!r} but `{asset}` was never materialized: materialize `{asset}` first "
            f"(e.g. `dagster asset materialize -m pipelines --select +{asset}` or the factory job), or drop "
            f"{generator!r} from synthetic_dataset's generators"
        )
    return ref


def _lineage(
    generators: list[str],
    gan: GanModelRef | None,
    classifier: PixelClassifierRef | None,
    ldm: LdmModelRef | None,
    genseg: GenSegModelRef | None = None,
    federated: FederatedGanRef | None = None,
) -> dict:
    """Upstream versions of the chosen generators; they must agree on class map and resolution."""
    unknown = sorted(set(generators) - set(GENERATORS))
    if unknown or not generators:
        raise ValueError(f"generators: expected a non-empty list from {list(GENERATORS)}, received {generators}")
    lineage: dict = {"generators": sorted(set(generators))}
    slides: set[str] = set()
    if "stylegan2" in generators:
        gan = _route_input(gan, "gan_model", "stylegan2")
        classifier = _route_input(classifier, "pixel_classifier", "stylegan2")
        lineage.update(
            {
                "gan_mlflow_run": gan.mlflow_run_id,
                "gan_model_version": gan.model_version,
                "gan_step": gan.step,
                "gan_checkpoint": gan.path,
                "classifier_mlflow_run": classifier.mlflow_run_id,
                "classifier": classifier.path,
                "annotation_version": classifier.content_hash,
                "blocks": classifier.blocks,
                "class_map": classifier.class_map,
                "resolution": gan.resolution,
            }
        )
        slides |= set(gan.train_slide_ids)
    if "ldm" in generators:
        ldm = _route_input(ldm, "ldm_model", "ldm")
        for key, value in (("class_map", ldm.class_map), ("resolution", ldm.resolution)):
            if lineage.setdefault(key, value) != value:
                raise ValueError(
                    f"the GAN route uses {key} {lineage[key]!r} but the LDM {value!r}; export them "
                    f"separately (generators: [stylegan2] / [ldm]) or retrain one to match"
                )
        lineage.update(
            {
                "ldm_mlflow_run": ldm.mlflow_run_id,
                "ldm_model_version": ldm.model_version,
                "ldm_step": ldm.step,
                "ldm_checkpoint": ldm.path,
                "autoencoder": ldm.autoencoder,
                "autoencoder_mlflow_run": ldm.autoencoder_mlflow_run,
                "mask_bank": ldm.mask_bank,
                "ldm_annotation_version": ldm.annotation_version,
            }
        )
        slides |= set(ldm.train_slide_ids)
    if "genseg" in generators:
        slides |= _genseg_lineage(lineage, _route_input(genseg, "genseg_model", "genseg"))
    if CGAN_ROUTE in generators:  # tiles with a class and no mask: no class map of its own
        federated = _route_input(federated, "federated_gan", CGAN_ROUTE)
        cgan_route.require_resolution(lineage, federated.resolution)
        lineage.update(
            cgan_route.cgan_lineage(federated.path, federated.lineage, federated.mlflow_run_id, federated.model_version)
        )
        slides |= set(lineage["cgan_source_slides"])
    lineage["source_slides"] = sorted(slides)
    return lineage


# ---- GenSeg route (issue 13): lineage and pairs; kept apart from the other routes' code ----


def _genseg_lineage(lineage: dict, genseg: GenSegModelRef) -> set[str]:
    """Add the GenSeg route's versions to ``lineage`` (class map and resolution must agree); its slide ids."""
    for key, value in (("class_map", genseg.class_map), ("resolution", genseg.resolution)):
        if lineage.setdefault(key, value) != value:
            raise ValueError(
                f"the export's other routes use {key} {lineage[key]!r} but GenSeg {value!r}; export them separately "
                "(one route per generators list) or retrain genseg_model to match"
            )
    lineage.update(
        {
            "genseg_mlflow_run": genseg.mlflow_run_id,
            "genseg_model_version": genseg.model_version,
            "genseg_step": genseg.step,
            "genseg_search": genseg.search,
            "genseg_generator": genseg.path,
            "genseg_mask_bank": genseg.mask_bank,
            "genseg_annotation_version": genseg.annotation_version,
        }
    )
    return set(genseg.train_slide_ids)


def _genseg_route(lineage: dict, seeds: np.ndarray, class_weights: dict[int, float], device) -> "_Route":
    """The GenSeg route's pairs of one batch: augmented bank masks painted by the trained generator."""
    made = synthesize_genseg_pairs(
        load_genseg_generator(lineage["genseg_generator"], device),
        MaskBank.load(lineage["genseg_mask_bank"]),
        seeds,
        MaskAugmentConfig.from_dict(generator_meta(lineage["genseg_generator"])["augment"]),
        class_weights,
    )
    return _Route(
        "genseg",
        made.images,
        made.masks,
        np.full(len(made.seeds), np.nan, np.float32),
        made.seeds,
        [f"genseg_{int(s):010d}" for s in made.seeds],
        "genseg_latents.npz",
        made.latent_arrays(),
    )


# Where files are, not what they are: not part of the export version.
_PATHS = (
    "gan_checkpoint",
    "classifier",
    "ldm_checkpoint",
    "autoencoder",
    "mask_bank",
    "genseg_generator",
    "genseg_mask_bank",
    "cgan_checkpoint",
)


@dg.asset(
    group_name="export",
    partitions_def=export_batches,
    # classifier_eval: evaluated before its labels are exported; label_judge by key (evaluation imports us)
    deps=[classifier_eval, dg.AssetKey("label_judge")],
    code_version=EXPORT_CODE_VERSION,
    kinds={"pytorch", "parquet"},
    description="Synthetic image-mask pairs (GAN, LDM and/or GenSeg), one batch per partition, uncertainty- and "
    "memorization-filtered.",
)
def synthetic_dataset(
    context: dg.AssetExecutionContext,
    config: ExportConfig,
    training_tiles: TrainingTilesRef,
    gan_model: GanModelRef | None,
    pixel_classifier: PixelClassifierRef | None,
    ldm_model: LdmModelRef | None,
    genseg_model: GenSegModelRef | None,
    federated_gan: FederatedGanRef | None,
    storage: FactoryStorage,
    torch_device: TorchDevice,
    dask: DaskResource,
) -> dg.MaterializeResult:
    device = torch_device.device()
    batch = int(context.partition_key)
    lineage = _lineage(config.generators, gan_model, pixel_classifier, ldm_model, genseg_model, federated_gan)
    params = ExportParams(
        batch_size=config.batch_size,
        psi=config.psi,
        blocks=lineage.get("blocks", 5),
        mode=config.mode,
        drop_uncertain=config.drop_uncertain,
        top_frac=config.top_frac,
        match_pool=config.match_pool,
        ignore_uncertain=config.ignore_uncertain,
    )
    version = export_version({k: v for k, v in lineage.items() if k not in _PATHS}, params, config)
    export_dir = storage.export_root / version
    class_map = get_class_map(lineage["class_map"]) if "class_map" in lineage else None  # None: no mask route
    tiles = pd.read_parquet(training_tiles.path)
    start = time.perf_counter()
    routes: list[_Route] = []
    if "stylegan2" in lineage["generators"]:
        result = _gan_batch(context, lineage, batch, params, device, dask, tiles)
        routes.append(
            _Route(
                "stylegan2",
                result.images,
                result.masks,
                result.uncertainty,
                result.seeds,
                [sample_id(s) for s in result.seeds],
                "latents.npz",
                result.latent_arrays(),
            )
        )
    if "ldm" in lineage["generators"]:
        ae, _, scale = load_autoencoder(lineage["autoencoder"], device)
        ldm = synthesize_ldm_pairs(
            load_denoiser(lineage["ldm_checkpoint"], device),
            ae,
            scale,
            MaskBank.load(lineage["mask_bank"]),
            params.seeds(batch),
            weights_by_name(class_map.classes, config.class_weights),
            config.ldm_sampler,
            config.ldm_steps,
            config.ldm_guidance,
        )
        routes.append(
            _Route(
                "ldm",
                ldm.images,
                ldm.masks,
                np.full(len(ldm.seeds), np.nan, np.float32),
                ldm.seeds,
                [f"ldm_{int(s):010d}" for s in ldm.seeds],
                "ldm_latents.npz",
                ldm.latent_arrays(),
            )
        )
    if "genseg" in lineage["generators"]:
        routes.append(
            _genseg_route(
                lineage, params.seeds(batch), weights_by_name(class_map.classes, config.class_weights), device
            )
        )
    cgan = None
    if CGAN_ROUTE in lineage["generators"]:  # last: the rows of the mask routes come first
        cgan = cgan_route.synthesize_class_tiles(
            load_global_generator(lineage["cgan_checkpoint"]), params.seeds(batch), device
        )
        nan = np.full(len(cgan.seeds), np.nan, np.float32)
        ids = [cgan_route.sample_id(s) for s in cgan.seeds]
        routes.append(
            _Route(CGAN_ROUTE, cgan.images, None, nan, cgan.seeds, ids, cgan_route.LATENTS_FILE, cgan.latent_arrays())
        )
    images = np.concatenate([r.images for r in routes])
    has_mask = np.concatenate([np.full(len(r.images), r.masks is not None) for r in routes])
    masks = [m for r in routes for m in (r.masks if r.masks is not None else [None] * len(r.images))]
    uncertainty = np.concatenate([r.uncertainty for r in routes])
    generator = np.concatenate([[r.generator] * len(r.images) for r in routes])

    train = tiles[tiles["split"] == "train"]
    memo, thresholds = _memorization(images, has_mask, train, lineage, config)
    near_copy = memo["near_copy"].to_numpy()
    uncertain = np.zeros(len(images), bool)
    gan_rows = generator == "stylegan2"  # only the GAN route has labels to be unsure about
    uncertain[gan_rows] = uncertain_to_drop(
        np.where(near_copy[gan_rows], -np.inf, uncertainty[gan_rows]), config.drop_uncertain
    )
    scores = pd.DataFrame(index=range(len(images)))
    if has_mask.any():  # label scores exist only where there is a mask
        mask_scores = _label_scores(
            context, storage, config, images[has_mask], np.stack(masks[: has_mask.sum()]), class_map
        )
        scores = mask_scores.set_axis(np.flatnonzero(has_mask)).reindex(scores.index)
    low_agreement = _low_agreement(scores, config.min_agreement)
    keep = ~(uncertain | near_copy | low_agreement)

    mpps = tiles["mpp"].dropna()
    rows = pd.concat(
        [_manifest_rows(r, batch, lineage, class_map, mpps) for r in routes if r.masks is not None]
        + ([cgan_route.manifest_rows(cgan, batch, lineage, _median(mpps))] if cgan is not None else []),
        ignore_index=True,
    )
    rows = pd.concat([rows, scores], axis=1).assign(low_agreement=low_agreement)
    rows["nn_pixel_distance"] = memo["nn_pixel"].to_numpy(np.float32)
    rows["nn_feature_distance"] = memo["nn_feature"].to_numpy(np.float32)
    rows["near_copy"] = near_copy
    tmp = temp_dir_beside(export_dir / "batches" / f"{batch:03d}")
    palette = class_map.palette() if class_map else []
    write_batch(tmp, images, masks, keep, rows, palette, {r.latents_file: r.arrays for r in routes})
    replace_dir(tmp, export_dir / "batches" / f"{batch:03d}")
    full = assemble_manifest(export_dir)
    pairs = full[full["mask"].notna()] if len(full) else full  # label scores: rows with a mask
    label_summary = _write_label_scores(export_dir, pairs, class_map, config, storage)
    _write_card(export_dir, version, lineage, params, config, class_map, full)
    seconds = time.perf_counter() - start
    kept_per_generator = {g: int(keep[generator == g].sum()) for g in lineage["generators"]}
    return dg.MaterializeResult(
        value=ExportRef(
            path=str(export_dir),
            batch=batch,
            content_hash=version,
            class_map=lineage.get("class_map"),
            resolution=lineage["resolution"],
        ),
        metadata={
            "export_version": version,
            "generators": ", ".join(lineage["generators"]),
            "kept": int(keep.sum()),
            "kept_per_generator": dg.MetadataValue.json(kept_per_generator),
            "dropped_uncertain": int(uncertain.sum()),
            "dropped_near_copy": int(near_copy.sum()),
            "near_copy_share": float(near_copy.mean()),
            "dropped_low_agreement": int(low_agreement.sum()),
            **_label_metadata(label_summary),
            "uncertainty_mean": float(np.nanmean(uncertainty)) if gan_rows.any() else float("nan"),
            "nn_pixel_distance": dg.MetadataValue.json(_quantiles(memo["nn_pixel"])),
            "nn_feature_distance": dg.MetadataValue.json(_quantiles(memo["nn_feature"])),
            "copy_thresholds": dg.MetadataValue.json(thresholds),
            "pairs_per_second": round(len(images) / seconds, 2),
            "export_samples_total": len(full),
            **({"tile_classes_kept": dg.MetadataValue.json(cgan_route.tile_class_counts(rows[keep]))} if cgan else {}),
            **{
                f"samples_{g}": png_markdown(
                    image_grid_png(images[keep & (generator == g)][:16], columns=8, scale=2), f"kept {g} samples"
                )
                for g in lineage["generators"]
            },
            "path": dg.MetadataValue.path(str(export_dir)),
        },
    )


@dataclass
class _Route:
    """One generator's share of a batch, before filtering."""

    generator: str  # "stylegan2" | "ldm" | "genseg" | "cgan_federated"
    images: np.ndarray  # uint8 [B, R, R, 3]
    masks: np.ndarray | None  # uint8 [B, R, R]; None for tiles that have a class instead (cgan_federated)
    uncertainty: np.ndarray  # float32 [B]; NaN where the mask is the input (LDM, GenSeg)
    seeds: np.ndarray  # int64 [B]
    ids: list[str]  # sample ids (file names)
    latents_file: str  # npz in the batch folder that regenerates the samples
    arrays: dict[str, np.ndarray]  # its content


def _gan_batch(
    context: dg.AssetExecutionContext,
    lineage: dict,
    batch: int,
    params: ExportParams,
    device: torch.device,
    dask: DaskResource,
    tiles: pd.DataFrame,
) -> SyntheticBatch:
    """The DatasetGAN route: choose the seeds (colour-matched to training crops when ``match_pool``), generate,
    then label with the pixel-classifier ensemble (on dask when configured)."""
    G = load_generator(lineage["gan_checkpoint"], device)
    reference = reference_histograms(tiles, G.cfg.resolution) if params.match_pool else None
    seeds = params.batch_seeds(G, batch, reference)
    cluster = dask.spec().address
    if cluster:  # scale out: workers regenerate their share of the batch's seeds from the checkpoint files
        context.log.info(f"generating batch {batch} on the dask cluster at {cluster}")
        return synthesize_on_dask(lineage["gan_checkpoint"], lineage["classifier"], seeds, params, address=cluster)
    return synthesize_seeds(G, PixelEnsemble.load(lineage["classifier"]), seeds, params, device)


def _memorization(
    images: np.ndarray, has_mask: np.ndarray, train: pd.DataFrame, lineage: dict, config: ExportConfig
) -> tuple[pd.DataFrame, dict[str, float]]:
    """Near-copy check of every image against what its generator trained on, and the thresholds used.

    The mask routes' images are compared with random training crops (pixels, and the StyleGAN discriminator's
    features when it is in the lineage); the conditional tiles (rows after them) with whole training tiles at the
    federated GAN's resolution (``ops.export.cgan_route.memorization``).
    """
    parts, thresholds = [], {}
    if has_mask.any():
        bank = TileCropSampler(train, lineage["resolution"], seed=4242, crops_per_tile=1).batch_uint8(
            min(config.memorization_bank, max(len(train), 1) * 8)
        )
        parts.append(
            check_memorization(
                images[has_mask], bank, checkpoint=lineage.get("gan_checkpoint"), quantile=config.copy_quantile
            )
        )
        thresholds.update({k: float(v) for k, v in parts[-1].attrs.items() if isinstance(v, int | float)})
    if not has_mask.all():
        parts.append(cgan_route.memorization(images[~has_mask], train, config.memorization_bank, config.copy_quantile))
        thresholds.update(
            {f"{CGAN_ROUTE}_{k}": float(v) for k, v in parts[-1].attrs.items() if isinstance(v, int | float)}
        )
    return pd.concat(parts, ignore_index=True), thresholds


def _median(values: pd.Series) -> float:
    return float(values.median()) if len(values) else float("nan")


def _quantiles(values: pd.Series) -> dict[str, float]:
    v = values.dropna().to_numpy()
    return {f"q{q}": round(float(np.quantile(v, q / 100)), 4) for q in (0, 5, 50, 95, 100)} if len(v) else {}


def _manifest_rows(route: _Route, batch: int, lineage: dict, class_map, mpps: pd.Series) -> pd.DataFrame:
    """One manifest row per sample of one generator; source slides appear only as opaque ids.

    Lineage columns of the other route stay empty, so one table serves both generators.
    """
    generator, ids, masks = route.generator, route.ids, route.masks
    # One count per mask: the classes' shares and the unlabelled share (ignore_uncertain) add up to one.
    shares = np.stack([np.bincount(m.ravel(), minlength=IGNORE_INDEX + 1) / m.size for m in masks])
    gan, ldm, genseg = generator == "stylegan2", generator == "ldm", generator == "genseg"
    annotation_version = lineage[
        "annotation_version" if gan else "ldm_annotation_version" if ldm else "genseg_annotation_version"
    ]
    rows = pd.DataFrame(
        {
            "sample_id": ids,
            "image": [f"batches/{batch:03d}/images/{i}.png" for i in ids],
            "mask": [f"batches/{batch:03d}/masks/{i}.png" for i in ids],
            "batch": batch,
            "seed": route.seeds,
            "latents": [f"batches/{batch:03d}/{route.latents_file}#{j}" for j in range(len(ids))],
            "uncertainty": route.uncertainty.astype(np.float32),
            "mpp": _median(mpps),
            "generator": generator,
            "gan_mlflow_run": lineage["gan_mlflow_run"] if gan else "",
            "gan_model_version": lineage["gan_model_version"] if gan else "",
            "classifier_mlflow_run": lineage["classifier_mlflow_run"] if gan else "",
            "annotation_version": annotation_version,
            "ldm_mlflow_run": lineage["ldm_mlflow_run"] if ldm else "",
            "ldm_model_version": lineage["ldm_model_version"] if ldm else "",
            "autoencoder_mlflow_run": lineage["autoencoder_mlflow_run"] if ldm else "",
            "genseg_mlflow_run": lineage["genseg_mlflow_run"] if genseg else "",
            "genseg_model_version": lineage["genseg_model_version"] if genseg else "",
            "source_slides": ";".join(lineage["source_slides"]),
            "histofactory_version": package_version("histofactory"),
            "torch_version": torch.__version__,
        }
    )
    for k, name in enumerate(class_map.classes):
        rows[f"frac_{name.replace(' ', '_')}"] = shares[:, k].astype(np.float32)
    rows["frac_unlabelled"] = shares[:, IGNORE_INDEX].astype(np.float32)
    return rows


def _unlabelled_line(manifest: pd.DataFrame) -> str:
    share = float(manifest["frac_unlabelled"].mean()) if "frac_unlabelled" in manifest and len(manifest) else 0.0
    if not share:
        return ""
    return f"\n- {IGNORE_INDEX}: unlabelled (grey) {share:.2%}: leave these pixels out of the loss"


def _matching_line(params: ExportParams) -> str:
    if not params.match_pool:
        return "Every seed of a batch is used (no colour matching)."
    return (
        f"Each batch keeps the {params.batch_size} of {params.match_pool * params.batch_size} candidate seeds whose "
        "colour histograms are nearest crops of the training slides (greedy nearest-neighbour matching)."
    )


def _ignore_line(params: ExportParams) -> str:
    if not params.ignore_uncertain:
        return ""
    return (
        f" In each mask the {params.ignore_uncertain:.0%} of pixels with the highest JS divergence are unlabelled "
        f"(value {IGNORE_INDEX}, grey): train with them ignored."
    )


def _route_lines(lineage: dict, params: ExportParams, config: ExportConfig) -> str:
    """How each generator made its pairs, for the dataset card."""
    lines = []
    if "stylegan2" in lineage["generators"]:
        lines.append(f"""- **stylegan2** (DatasetGAN/HDGAN recipe): a StyleGAN2-ADA generator; images labelled
  pixel by pixel by an ensemble of MLPs over the generator's features, trained on expert annotations of generated
  images (annotation set `{lineage["annotation_version"]}`). Truncation psi {params.psi}; features: last
  {params.blocks} synthesis blocks; ensemble decision: {params.mode}. The {params.drop_uncertain:.0%} most uncertain
  images of each batch (JS divergence across members, mean of the top {params.top_frac:.0%} pixels) are dropped.
  {_matching_line(params)}{_ignore_line(params)}
  GAN: MLflow run `{lineage["gan_mlflow_run"]}`, model version `{lineage["gan_model_version"]}`; classifier: MLflow run
  `{lineage["classifier_mlflow_run"]}`. Latents: `batches/<b>/latents.npz` (`seeds`, `z`, `w`).""")
    if "ldm" in lineage["generators"]:
        weights = config.class_weights or "none (the real masks' balance)"
        lines.append(f"""- **ldm** (DISC/GenSeg recipe): masks drawn from a bank of real annotation shapes (flips,
  rotations, class weights {weights}), images generated from them by a mask-conditioned latent diffusion model
  ({config.ldm_sampler} sampler, {config.ldm_steps} DDIM steps, guidance {config.ldm_guidance}) trained on slide
  annotations (set `{lineage["ldm_annotation_version"]}`). LDM: MLflow run `{lineage["ldm_mlflow_run"]}`, model
  version `{lineage["ldm_model_version"]}`; autoencoder: MLflow run `{lineage["autoencoder_mlflow_run"]}`. The label
  comes first, so no uncertainty filter applies. Latents: `batches/<b>/ldm_latents.npz` (`seeds`, `latents`).""")
    if "genseg" in lineage["generators"]:
        search = "searched architecture" if lineage["genseg_search"] else "fixed uniform architecture (no search)"
        lines.append(f"""- **genseg** (GenSeg recipe): masks drawn from the same bank, then rotated, flipped and
  scaled; images painted by a mask-to-image U-Net of searchable cells ({search}) trained with pix2pix losses
  on slide annotations (set `{lineage["genseg_annotation_version"]}`) and an unconditional discriminator on the
  kept tiles, jointly with a segmenter whose validation loss steered the architecture. MLflow run
  `{lineage["genseg_mlflow_run"]}`, model version `{lineage["genseg_model_version"]}`. No uncertainty filter.
  `batches/<b>/genseg_latents.npz`: `seeds`, `transforms` (the similarity transform of each bank mask).""")
    if CGAN_ROUTE in lineage["generators"]:
        lines.append(cgan_route.card_lines(lineage))
    return "\n".join(lines)


def _write_card(
    export_dir, version: str, lineage: dict, params: ExportParams, config: ExportConfig, class_map, manifest
) -> None:
    classes = (
        [
            {"id": i, "name": n, "colour": list(c)}
            for i, (n, c) in enumerate(zip(class_map.classes, class_map.colours, strict=True))
        ]
        if class_map
        else []
    )  # no mask route: no mask classes
    (export_dir / "classes.json").write_text(json.dumps(classes, indent=1))
    fractions = (
        {c["name"]: round(float(manifest[f"frac_{c['name'].replace(' ', '_')}"].mean()), 4) for c in classes}
        if len(manifest) and classes
        else {}
    )
    counts = manifest["generator"].value_counts().to_dict() if len(manifest) else {}
    card = (
        f"""# Synthetic histopathology segmentation dataset `{version}`

Made by histofactory {package_version("histofactory")} from tissue tiles of {len(lineage["source_slides"])} slides
(opaque ids in the manifest). Column `generator` says which route made each pair:

{_route_lines(lineage, params, config)}

- samples: {len(manifest)} ({", ".join(f"{g}: {n}" for g, n in sorted(counts.items()))}; batches of
  {params.batch_size} per generator; seeds `{params.seed_base} + batch * {params.batch_size} + i`; colour-matched
  stylegan2 candidates `{params.seed_base} + batch * {params.batch_size * max(1, params.match_pool)} + i`)
- near-copies of training tiles (pixel space, and the GAN discriminator's feature space when a GAN is in the
  lineage) are dropped from every route

## Label scores (does each mask say what its image shows?)

{_label_score_lines(export_dir)}

## Classes (mask pixel value, name, colour, mean pixel share)

"""
        + (
            "\n".join(
                f"- {c['id']}: {c['name']} {tuple(c['colour'])} {fractions.get(c['name'], 0):.2%}" for c in classes
            )
            or "None: no route of this export makes masks (its tiles carry `tile_class`)."
        )
        + _unlabelled_line(manifest)
        + """

## Files

- `manifest.parquet` / `manifest.csv`: one row per sample (paths relative to this folder, generator, seed,
  latents, uncertainty (GAN route), nearest-neighbour distances to training tiles, class pixel fractions
  (`frac_unlabelled`: pixels left unlabelled), mpp, lineage)
- `batches/<b>/images/<id>.png` RGB image; `batches/<b>/masks/<id>.png` indexed mask (palette = class colours)
- `batches/<b>/latents.npz` / `ldm_latents.npz` / `genseg_latents.npz`: what regenerates every sample of the batch
- `batches/<b>/dropped.parquet`: samples dropped and why (uncertainty, near_copy, low_agreement)
- `label_scores.json`: per route mean fidelity / judge agreement and per class; the judge's held-out Dice
- `classes.json`: class ids, names, colours

Load in PyTorch: `SyntheticSegmentationDataset("<this folder>", generator="genseg")` from `ops.export.dataset`
(`generator=None` loads every route that has masks); `SyntheticTileClassDataset("<this folder>")` loads the
`cgan_federated` tiles as (image, `tile_class`): those rows have no mask file.
"""
    )
    tmp = export_dir / ".dataset_card.md.tmp"
    tmp.write_text(card)
    tmp.replace(export_dir / "dataset_card.md")


# ----------------------------------------------------------------------------------------------------------------
# Label scores of every pair: fidelity (demo stand-in) and agreement with the label judge (real annotated crops).


def _label_scores(
    context: dg.AssetExecutionContext,
    storage: FactoryStorage,
    config: ExportConfig,
    images: np.ndarray,
    masks: np.ndarray,
    class_map,
) -> pd.DataFrame:
    """Per-pair ``fidelity`` (on the labelled pixels) and ``fidelity_all_pixels`` (unlabelled pixels counted as
    misses: what a mask that labels less cannot inflate), ``judge_agreement`` (NaN where not measured) and their
    per-class Dice columns."""
    k, out = class_map.n_classes, pd.DataFrame(index=range(len(images)))
    if config.stand_in_fidelity:
        context.log.warning("DEMO: fidelity is measured against the rule-based stand-in annotator")
        labels = _stand_in(images)
        mean, per_class = pair_dice(labels, masks, k)
        whole, _ = pair_dice(labels, masks, k, unlabelled_as_miss=True)
        out = out.assign(
            fidelity=mean.astype(np.float32),
            fidelity_all_pixels=whole.astype(np.float32),
            **_class_columns("fidelity", per_class, class_map),
        )
    judge = storage.label_judge_path
    if judge.exists():
        model = load_segmenter(judge)
        if model.cfg.n_classes != k:
            raise ValueError(
                f"{judge}: the label judge predicts {model.cfg.n_classes} classes but the export's class map "
                f"{class_map.name!r} has {k}; rematerialize real_annotations and label_judge with that class map"
            )
        mean, per_class = judge_agreement(images, masks, judge_labeller(model), k)
        out = out.assign(judge_agreement=mean.astype(np.float32), **_class_columns("judge", per_class, class_map))
    else:
        context.log.warning(f"no label judge at {judge}: judge_agreement is not measured (materialize label_judge)")
    return out


def _stand_in(images: np.ndarray) -> np.ndarray:
    return np.stack([demo_annotate(img) for img in images])


def _class_columns(prefix: str, per_class: np.ndarray, class_map) -> dict[str, np.ndarray]:
    return {
        f"{prefix}_{name.replace(' ', '_')}": per_class[:, i].astype(np.float32)
        for i, name in enumerate(class_map.classes)
    }


def _low_agreement(scores: pd.DataFrame, min_agreement: float) -> np.ndarray:
    """Pairs below ``min_agreement``: by fidelity where measured (demo), else by judge agreement."""
    column = "fidelity" if "fidelity" in scores else "judge_agreement" if "judge_agreement" in scores else None
    if column is None or min_agreement <= 0:
        return np.zeros(len(scores), bool)
    return below_agreement(scores[column].to_numpy(), min_agreement)


def _write_label_scores(export_dir, manifest: pd.DataFrame, class_map, config: ExportConfig, storage) -> dict:
    """Per-route summary of the kept pairs' scores, the judge's held-out Dice and the correlation, as JSON."""
    summary: dict = {"agreement_floor": config.agreement_floor, "min_agreement": config.min_agreement, "routes": {}}
    for column, prefix in (("fidelity", "fidelity"), ("judge_agreement", "judge")):
        if column not in manifest or manifest[column].isna().all():
            continue
        per_class = manifest[[f"{prefix}_{n.replace(' ', '_')}" for n in class_map.classes]].to_numpy()
        for route, stats in route_summary(manifest, per_class, class_map.classes, column).items():
            summary["routes"].setdefault(route, {}).update(stats)
    if "fidelity_all_pixels" in manifest and manifest["fidelity_all_pixels"].notna().any():
        no_classes = np.empty((len(manifest), 0))  # the per-route mean only: the per-class Dice is fidelity's
        for route, stats in route_summary(manifest, no_classes, [], "fidelity_all_pixels").items():
            summary["routes"].setdefault(route, {}).update(stats)
    report = storage.label_judge_path.with_suffix(".json")
    if report.exists():
        summary["judge_dice_held_out"] = json.loads(report.read_text())["held_out"]["mean_dice"]
    if {"fidelity", "judge_agreement"} <= set(manifest.columns):
        summary["judge_fidelity_correlation"] = agreement_correlation(
            manifest["fidelity"].to_numpy(), manifest["judge_agreement"].to_numpy()
        )
    tmp = export_dir / f".{LABEL_SCORES_FILE}.tmp"
    tmp.write_text(json.dumps(summary, indent=1, default=float))
    tmp.replace(export_dir / LABEL_SCORES_FILE)
    return summary


def _label_metadata(summary: dict) -> dict:
    finite = json.loads(json.dumps(summary, default=float), parse_constant=lambda _: None)  # NaN -> null
    out: dict = {"label_scores": dg.MetadataValue.json(finite)}
    for route, stats in summary["routes"].items():
        for key in ("fidelity", "fidelity_all_pixels", "judge_agreement"):
            if key in stats and np.isfinite(stats[key]):
                out[f"{key}_{route}"] = float(stats[key])
    if "judge_dice_held_out" in summary:
        out["judge_dice_held_out"] = float(summary["judge_dice_held_out"])
    return out


def _label_score_lines(export_dir) -> str:
    """The card's label-score paragraph, from ``label_scores.json``."""
    path = export_dir / LABEL_SCORES_FILE
    summary = json.loads(path.read_text()) if path.exists() else {"routes": {}}
    lines = [
        "`fidelity` (demo only): Dice of the exported mask against the stand-in annotator's labels of the exported "
        "image (a real pair scores 1.0). `judge_agreement`: Dice against a segmenter trained on the real annotated "
        "training crops"
        + (
            f", whose own held-out Dice is {summary['judge_dice_held_out']:.3f}"
            if "judge_dice_held_out" in summary
            else ""
        )
        + ". Per-pair values and per-class columns are in the manifest."
    ]
    for route, stats in sorted(summary["routes"].items()):
        for key in ("fidelity", "judge_agreement"):
            if key in stats:
                per_class = ", ".join(
                    f"{k.split('/', 1)[1]} {v:.2f}" for k, v in stats.items() if k.startswith(f"{key}/") and v == v
                )
                whole = stats.get("fidelity_all_pixels", float("nan")) if key == "fidelity" else float("nan")
                unlabelled = f"; {whole:.3f} with unlabelled pixels counted as misses" if whole < stats[key] else ""
                lines.append(f"- {route}: mean {key} {stats[key]:.3f} ({per_class}){unlabelled}")
    if "judge_fidelity_correlation" in summary:
        lines.append(f"- correlation of judge agreement with fidelity: {summary['judge_fidelity_correlation']:.2f}")
    return "\n".join(lines)


# ----------------------------------------------------------------------------------------------------------------
# Quality gates (see assets/gates.py): per batch, read from the partition's own materialization.


class NearCopyGate(dg.Config):
    """Threshold of ``synthetic_dataset``'s ``near_copies_rare`` gate."""

    max_near_copy_share: float = Field(
        default=0.1,
        ge=0.0,
        le=1.0,
        description="Largest share of a batch's generated pairs flagged as near-copies of training crops (closer "
        "than the copy_quantile of training-to-training distances, in pixel or discriminator-feature space; a "
        "generator that does not memorize flags about 2 x copy_quantile, 0.02 by default).",
    )


@dg.asset_check(
    asset=synthetic_dataset,
    blocking=True,
    description="Fails a batch whose generators reproduce training crops too often (memorization; the near-copies "
    "themselves are dropped from the export either way).",
)
def near_copies_rare(context: dg.AssetCheckExecutionContext, config: NearCopyGate) -> dg.AssetCheckResult:
    meta = latest_metadata(context, synthetic_dataset.key)
    return gate(
        "near_copy_share",
        number(meta, "near_copy_share", "synthetic_dataset"),
        "<=",
        "max_near_copy_share",
        config.max_near_copy_share,
        "near-copies of training crops are rare",
        extra={"dropped_near_copy": number(meta, "dropped_near_copy", "synthetic_dataset")},
    )


@dg.asset_check(
    asset=synthetic_dataset,
    description="Warns when a route's mean fidelity (or judge agreement, without a stand-in) is below the floor.",
)
def label_agreement_floor(context: dg.AssetCheckExecutionContext, storage: FactoryStorage) -> dg.AssetCheckResult:
    version = latest_metadata(context, synthetic_dataset.key)["export_version"]  # of the run's batch
    summary = json.loads((storage.export_root / version / LABEL_SCORES_FILE).read_text())
    floor, means = summary["agreement_floor"], {}
    for route, stats in summary["routes"].items():
        key = "fidelity" if "fidelity" in stats else "judge_agreement"
        means[f"{key}_{route}"] = float(stats[key])
    low = sorted(k for k, v in means.items() if v < floor)
    return dg.AssetCheckResult(
        passed=not low and bool(means),
        severity=dg.AssetCheckSeverity.WARN,
        metadata={**means, "agreement_floor": floor},
        description=f"below the floor {floor}: {', '.join(low)}"
        if low
        else ("no label score measured" if not means else f"every route at or above {floor}"),
    )
