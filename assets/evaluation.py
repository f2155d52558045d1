"""Proof of value: at a given label budget, do synthetic pairs help a segmentation model on real, held-out tiles?

``real_annotations`` cuts leak-free real pairs: training crops from the annotated tiles of training slides (the label
budget an expert paid for), validation and test crops from disjoint tiles of held-out slides (expert data: their slide
annotations; demo: the stand-in labels them). ``label_judge`` trains a segmenter on the training crops; the export
scores every pair with it. ``downstream_eval`` runs the learning curve of ``ops.evaluation.downstream`` (arms, budgets,
seeds, λ chosen on validation, paired bootstrap CIs); its check ``synthetic_helps`` applies ``curve_verdict``.
"""

import io
import json
from pathlib import Path
from typing import Literal

import dagster as dg
import numpy as np
import pandas as pd
from PIL import Image
from pydantic import Field

from assets.lineage import png_markdown
from ops.common.images import image_grid_png
from ops.evaluation.budget_routes import RouteFiles, RouteRetraining, build_budget_routes
from ops.evaluation.downstream import export_pairs, run_downstream
from ops.evaluation.judge import JudgeConfig, train_judge
from ops.evaluation.learning_curve import CurveConfig, curve_png
from ops.evaluation.metrics import overlay_png
from ops.evaluation.real_split import RealPairs, assign_parts, cut_pairs
from ops.evaluation.segmenter import save_segmenter
from ops.export.dataset import mask_routes
from ops.labelling.class_maps import get_class_map
from ops.labelling.demo_annotator import demo_annotate, demo_labels
from resources import FactoryStorage, MlflowTracking, TorchDevice
from resources.references import (
    AnnotationsRef,
    AutoencoderRef,
    DownstreamRef,
    ExportRef,
    GanModelRef,
    GeneratedFeaturesRef,
    LdmModelRef,
    RealAnnotationsRef,
    TileAnnotationsRef,
    TrainingTilesRef,
)

DOWNSTREAM_CODE_VERSION = "downstream-4"  # 4: channels-last U-Net training
# The curve alone: 5: the mix arm runs one forward pass per loader (its numbers changed; real pairs and judge did not).
CURVE_CODE_VERSION = "downstream-6"


class RealAnnotationConfig(dg.Config):
    """Leak-free real image-mask pairs: training crops of annotated training tiles, held-out crops for val/test."""

    source: Literal["demo_annotator", "slide_annotations"] = Field(
        default="demo_annotator",
        description="slide_annotations: every crop from tiles annotated in QuPath (asset tile_annotations); "
        "demo_annotator: DEMO ONLY, training crops from tile_annotations, held-out crops labelled by the stand-in.",
    )
    crops_per_tile: int = Field(default=4, ge=1, description="Non-overlapping crops cut from each tile.")
    heldout_tiles: int = Field(default=24, ge=2, description="Held-out tiles used at most (val + test), seeded.")
    val_share: float = Field(default=0.3, gt=0, lt=1, description="Share of the held-out tiles that validate.")
    seed: int = Field(default=0, description="Seeds tile choice, the val/test split and crop positions.")
    resolution: int = Field(
        default=64, ge=8, description="Crop edge in pixels; equal to the exported pairs' (the generators') resolution."
    )


@dg.asset(
    group_name="evaluation",
    code_version=DOWNSTREAM_CODE_VERSION,
    kinds={"python"},
    description="Real image-mask pairs, leak-free: train crops from annotated training tiles, val/test crops from "
    "disjoint held-out tiles.",
)
def real_annotations(
    context: dg.AssetExecutionContext,
    config: RealAnnotationConfig,
    training_tiles: TrainingTilesRef,
    tile_annotations: TileAnnotationsRef | None,
    storage: FactoryStorage,
) -> dg.MaterializeResult:
    if tile_annotations is None:
        raise FileNotFoundError(
            "real_annotations needs `tile_annotations` (the annotated training tiles are the label budget), "
            "which was never materialized under this data root: materialize `tile_annotations` first "
            "(demo: its demo_annotator option draws them)"
        )
    resolution = config.resolution
    annotated = pd.read_parquet(tile_annotations.table)
    class_map = tile_annotations.class_map or "demo"
    if config.source == "slide_annotations":
        rows = _limit_heldout(annotated, config)
        pairs = cut_pairs(rows, assign_parts(rows, config.val_share, config.seed), resolution, config.crops_per_tile)
    else:
        context.log.warning("DEMO: held-out tiles are labelled by the rule-based stand-in annotator, not an expert")
        tiles = pd.read_parquet(training_tiles.path)
        held = _limit_heldout(tiles[tiles["split"] == "holdout"], config)
        train = annotated[annotated["split"] == "train"]
        parts = assign_parts(pd.concat([train, held], ignore_index=True), config.val_share, config.seed)
        labelled = cut_pairs(train, parts.iloc[: len(train)], resolution, config.crops_per_tile, config.seed)
        heldout = cut_pairs(
            held, parts.iloc[len(train) :], resolution, config.crops_per_tile, config.seed, labeller=demo_annotate
        )
        pairs = RealPairs(
            *(np.concatenate([a, b]) for a, b in zip(_arrays(labelled), _arrays(heldout), strict=True))
        )  # RealPairs re-checks that no tile is shared
    out = storage.real_annotations_path
    out.parent.mkdir(parents=True, exist_ok=True)
    pairs.save(out)
    return dg.MaterializeResult(
        value=RealAnnotationsRef(path=str(out), source=config.source, resolution=resolution, class_map=class_map),
        metadata={
            **pairs.counts(),
            "source": config.source,
            "class_map": class_map,
            "overlay": png_markdown(
                overlay_png(pairs.images[0], pairs.masks[0], get_class_map(class_map).colours), "real crop with mask"
            ),
            "path": dg.MetadataValue.path(str(storage.real_annotations_path)),
        },
    )


def _limit_heldout(tiles: pd.DataFrame, config: RealAnnotationConfig) -> pd.DataFrame:
    """At most ``heldout_tiles`` held-out rows (seeded), every training row."""
    held = tiles[tiles["split"] == "holdout"]
    if len(held) > config.heldout_tiles:
        held = held.sample(config.heldout_tiles, random_state=config.seed)
    return pd.concat([tiles[tiles["split"] != "holdout"], held], ignore_index=True)


def _arrays(pairs: RealPairs) -> tuple[np.ndarray, ...]:
    return pairs.images, pairs.masks, pairs.tile_ids, pairs.parts


def _real_pairs(real_annotations: RealAnnotationsRef) -> tuple[RealPairs, list[str]]:
    """The real pairs and their class names (the class map they were annotated with)."""
    classes = list(get_class_map(real_annotations.class_map or "demo").classes)
    return RealPairs.load(Path(real_annotations.path)), classes


# ----------------------------------------------------------------------------------------------------------------
# The label judge.


class LabelJudgeConfig(dg.Config):
    """A segmenter trained on the real annotated training crops; the export scores its pairs with it."""

    steps: int = Field(default=600, ge=1, description="Optimiser steps over all labelled training crops.")
    base_channels: int = Field(default=16, ge=1, description="Segmenter width.")
    seed: int = Field(default=0, description="Seeds weights, batches and augmentation.")


@dg.asset(
    group_name="evaluation",
    code_version=DOWNSTREAM_CODE_VERSION,
    kinds={"pytorch"},
    pool="training",
    description="Label judge: a segmenter trained on the real annotated training crops, with its held-out Dice.",
)
def label_judge(
    config: LabelJudgeConfig,
    real_annotations: RealAnnotationsRef,
    storage: FactoryStorage,
    torch_device: TorchDevice,
) -> dg.MaterializeResult:
    real, classes = _real_pairs(real_annotations)
    torch_device.device()  # applies the thread setting
    model, report = train_judge(
        real, classes, JudgeConfig(config.steps, base_channels=config.base_channels, seed=config.seed)
    )
    path = storage.label_judge_path
    tmp = path.with_name(f".{path.name}.tmp")
    save_segmenter(model, tmp)
    tmp.replace(path)
    (path.with_suffix(".json")).write_text(json.dumps({"held_out": report}, indent=1))
    return dg.MaterializeResult(
        metadata={
            "judge_dice_held_out": report["mean_dice"],
            "judge_jaccard_held_out": report["mean_jaccard"],
            "per_class": dg.MetadataValue.json({k: v for k, v in report.items() if k.startswith("dice/")}),
            "path": dg.MetadataValue.path(str(path)),
        }
    )


class DownstreamConfig(dg.Config):
    """The learning curve (see ``ops.evaluation.learning_curve.CurveConfig``, whose defaults these mirror)."""

    budgets: list[int] = Field(
        default=list(CurveConfig().budgets), description="Label budgets N in crops; 0 = every labelled training crop."
    )
    seeds: list[int] = Field(default=list(CurveConfig().seeds), description="Seeds per point; pair the arms.")
    lambdas: list[float] = Field(
        default=list(CurveConfig().lambdas), description="Synthetic loss weights tried; one chosen per N on validation."
    )
    pretrain_shares: list[float] = Field(
        default=list(CurveConfig().pretrain_shares),
        description="syn_then_real: pre-training steps as shares of its fine-tune steps; one chosen per N on "
        "validation.",
    )
    arms: list[str] = Field(
        default=list(CurveConfig().arms), description="Arms: real, real_aug, syn_only, mix, syn_then_real."
    )
    real_passes: int = Field(default=CurveConfig().real_passes, ge=1, description="Passes over the N real crops.")
    min_steps: int = Field(default=CurveConfig().min_steps, ge=1, description="Floor on optimiser steps.")
    base_channels: int = Field(default=CurveConfig().base_channels, ge=1, description="Segmenter width.")
    norm: str = Field(default=CurveConfig().norm, description="batch (default; re-estimated on real crops) or group.")
    synthetic_max: int = Field(default=CurveConfig().synthetic_max, ge=1, description="Synthetic pairs per route.")
    per_budget: bool = Field(
        default=False,
        description="Retrain each route's labelled part on every budget's N labels (the equal-label-budget protocol; "
        "slower). Off: the exported pairs, whose labels come from every annotated tile (an upper bound at small N).",
    )
    gan_epochs: int = Field(default=RouteRetraining().gan_epochs, ge=1, description="per_budget: classifier epochs.")
    gan_psi: float = Field(
        default=RouteRetraining().gan_psi,
        gt=0,
        le=1,
        description="per_budget: truncation psi of the GAN route's samples (1 = none; default: the export's).",
    )
    gan_match_pool: int = Field(
        default=RouteRetraining().gan_match_pool,
        ge=0,
        description="per_budget: 0 keeps the GAN route's first samples; k >= 1 generates k times as many and keeps "
        "those whose colours match unlabelled training-slide crops.",
    )
    gan_ignore_uncertain: float = Field(
        default=RouteRetraining().gan_ignore_uncertain,
        ge=0,
        lt=1,
        description="per_budget: share of each GAN mask's pixels, those the classifier ensemble disagrees on most, "
        "left unlabelled (the U-Net loss skips them).",
    )
    ldm_pretrain_steps: int = Field(
        default=RouteRetraining().ldm_pretrain_steps, ge=1, description="per_budget: label-free denoiser pretraining."
    )
    ldm_finetune_steps: int = Field(
        default=RouteRetraining().ldm_finetune_steps, ge=1, description="per_budget: conditioning steps per budget."
    )
    ldm_batch: int = Field(default=RouteRetraining().ldm_batch, ge=1, description="per_budget: latents per step.")
    ldm_guidance: float = Field(
        default=RouteRetraining().ldm_guidance, ge=0, description="per_budget: guidance of the LDM route's samples."
    )
    unlabelled_crops: int = Field(
        default=RouteRetraining().unlabelled_crops, ge=1, description="per_budget: crops to pretrain on."
    )
    ldm_label_free: str | None = Field(
        default=None,
        description="per_budget: label-free denoiser weights the pretraining continues from (python -m "
        "ops.diffusion.label_free; shipped: resources/pretrained/ldm_demo_label_free.pt); none: random weights.",
    )
    workers: int = Field(
        default=1,
        ge=1,
        description="Processes training the curve's (budget, seed) points side by side, one torch thread each, on "
        "CPU (the same result, sooner; a GPU run keeps one process).",
    )

    def retraining(self) -> RouteRetraining:
        return RouteRetraining(
            gan_epochs=self.gan_epochs,
            gan_psi=self.gan_psi,
            gan_match_pool=self.gan_match_pool,
            gan_ignore_uncertain=self.gan_ignore_uncertain,
            ldm_pretrain_steps=self.ldm_pretrain_steps,
            ldm_finetune_steps=self.ldm_finetune_steps,
            ldm_batch=self.ldm_batch,
            ldm_guidance=self.ldm_guidance,
            unlabelled_crops=self.unlabelled_crops,
            ldm_label_free=self.ldm_label_free,
        )

    def curve(self) -> CurveConfig:
        return CurveConfig(
            budgets=tuple(self.budgets),
            seeds=tuple(self.seeds),
            lambdas=tuple(self.lambdas),
            pretrain_shares=tuple(self.pretrain_shares),
            arms=tuple(self.arms),
            real_passes=self.real_passes,
            min_steps=self.min_steps,
            base_channels=self.base_channels,
            norm=self.norm,
            synthetic_max=self.synthetic_max,
        )


@dg.asset(
    group_name="evaluation",
    code_version=CURVE_CODE_VERSION,
    kinds={"pytorch", "mlflow"},
    pool="training",
    description="Learning curve over label budgets: real only, real + classical augmentation, synthetic only, "
    "real + synthetic (λ on validation), synthetic then real; Dice/Jaccard on held-out real crops with CIs.",
)
def downstream_eval(
    context: dg.AssetExecutionContext,
    config: DownstreamConfig,
    real_annotations: RealAnnotationsRef,
    synthetic_dataset: dict[str, ExportRef],
    storage: FactoryStorage,
    mlflow_tracking: MlflowTracking,
    torch_device: TorchDevice,
    gan_model: GanModelRef | None,
    generated_features: GeneratedFeaturesRef | None,
    annotations: AnnotationsRef | None,
    autoencoder: AutoencoderRef | None,
    ldm_model: LdmModelRef | None,
    training_tiles: TrainingTilesRef | None,
) -> dg.MaterializeResult:
    real, classes = _real_pairs(real_annotations)
    export_dir = Path(max(synthetic_dataset.values(), key=lambda ref: ref.created_at).path)  # latest
    torch_device.device()  # applies the thread setting; the curve trains on the CPU
    routes = mask_routes(export_dir)  # segmentation: routes without masks (cgan_federated) are left out
    per_budget = {}
    if config.per_budget:
        files = RouteFiles(
            gan_checkpoint=gan_model.path if gan_model else None,
            features=generated_features.path if generated_features else None,
            feature_blocks=generated_features.blocks if generated_features else None,
            annotations=annotations.path if annotations else None,
            autoencoder=autoencoder.path if autoencoder else None,
            ldm_checkpoint=ldm_model.path if ldm_model else None,
            training_tiles=training_tiles.path if training_tiles else None,
        )
        val_x, val_y, _ = real.part("val")
        per_budget = build_budget_routes(routes, classes, files, config.retraining(), context.log.info, (val_x, val_y))
    result = run_downstream(
        real,
        classes,
        export_dir,
        config.curve(),
        routes,
        progress=context.log.info,
        budget_routes=per_budget,
        labeller=demo_labels if real_annotations.class_map == "demo" else None,  # the stand-in labels any image
        workers=config.workers,
    )
    summary = result.curve.summary
    headline = result.headline()
    out = storage.downstream_path
    out.parent.mkdir(parents=True, exist_ok=True)
    payload = {
        "summary": summary.to_dict(orient="records"),
        "lambdas": result.curve.lambdas,
        "pretrain_shares": result.curve.pretrain_shares,
        "verdict": result.verdict,
        "headline": headline,
        "synthetic_pairs": result.synthetic_pairs,
        "real": real.counts(),
        "export": export_dir.name,
        "per_budget_routes": result.per_budget,
    }
    tmp = out.with_suffix(".tmp")
    tmp.write_text(json.dumps(payload, indent=1, default=float))
    tmp.replace(out)
    result.curve.runs.to_parquet(out.with_name("runs.parquet"), index=False)
    picture = curve_png(summary)
    _log_to_mlflow(context, mlflow_tracking, config, result, picture, export_dir.name)
    return dg.MaterializeResult(
        value=DownstreamRef(path=str(out), content_hash=export_dir.name),
        metadata={
            **{k: v for k, v in headline.items() if isinstance(v, str) or np.isfinite(v)},
            "mean_dice_real": float(summary.loc[summary["arm"] == "real", "mean_dice"].iloc[0]),
            "curve": png_markdown(picture, "test mean Dice vs label budget"),
            "table": dg.MetadataValue.md(_table_markdown(summary)),
            "lambda_chosen": dg.MetadataValue.json(result.curve.lambdas),
            "pretrain_share_chosen": dg.MetadataValue.json(result.curve.pretrain_shares),
            "verdict": dg.MetadataValue.json(json.loads(json.dumps(result.verdict), parse_constant=lambda _: None)),
            "real_crops": dg.MetadataValue.json(real.counts()),
            "synthetic_pairs": dg.MetadataValue.json(result.synthetic_pairs),
            "per_budget_routes": dg.MetadataValue.json(result.per_budget),
            **{
                f"synthetic_examples_{r}": png_markdown(
                    image_grid_png(_first_images(export_dir, r), columns=8, scale=2), f"{r} pairs"
                )
                for r in result.routes
            },
        },
    )


def _first_images(export_dir, route: str) -> np.ndarray:
    return export_pairs(export_dir, route, 16)[0]


def _table_markdown(summary: pd.DataFrame) -> str:
    cols = ["budget", "arm", "lambda", "pretrain_share", "mean_dice", "mean_dice_sd", "gain_mean_dice",
            "ci_low_mean_dice", "ci_high_mean_dice", "mean_jaccard", "real_passes", "route_labels"]  # fmt: skip
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for _, row in summary[cols].iterrows():
        lines.append("| " + " | ".join(f"{v:.3f}" if isinstance(v, float) else str(v) for v in row) + " |")
    return "\n".join(lines)


def _log_to_mlflow(
    context, mlflow_tracking: MlflowTracking, config: DownstreamConfig, result, picture, version
) -> None:
    """Params, the curve's points, the label scores of the export and the picture, in one MLflow run."""
    import mlflow

    with mlflow_tracking.start_run(
        "downstream-eval", {"dagster_run_id": context.run.run_id, "export_version": version}
    ):
        mlflow.log_params({k: str(v) for k, v in config.model_dump().items()})
        for _, row in result.curve.summary.iterrows():
            name = str(row["arm"]).replace(":", "_")
            metrics = {f"{name}/{k}": float(row[k]) for k in ("mean_dice", "mean_jaccard", "gain_mean_dice")}
            mlflow.log_metrics({k: v for k, v in metrics.items() if np.isfinite(v)}, step=int(row["budget"]))
        mlflow.log_metrics({k: float(v) for k, v in result.headline().items() if not isinstance(v, str)})
        mlflow.log_dict(result.label_scores, "label_scores.json")
        mlflow.log_image(np.asarray(_png_to_array(picture)), "learning_curve.png")


def _png_to_array(png: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(png)).convert("RGB"))


# ----------------------------------------------------------------------------------------------------------------
# Quality gates (see assets/gates.py).


@dg.asset_check(
    asset=downstream_eval,
    description="Passes when a synthetic arm beats real only at some N <= 8 with its 95% CI above 0; warns when a "
    "route loses at the largest N by more than its CI.",
)
def synthetic_helps(storage: FactoryStorage) -> dg.AssetCheckResult:
    verdict = json.loads(storage.downstream_path.read_text())["verdict"]
    if verdict["passed"]:
        text = f"synthetic pairs help at small budgets: {', '.join(verdict['helping'])}"
    elif verdict["losing_at_max"]:
        text = (
            f"at N={verdict['largest_budget']} these arms lose beyond their CI: {', '.join(verdict['losing_at_max'])}"
        )
    else:
        text = "no synthetic arm beats real only at N <= 8 with its CI above 0"
    return dg.AssetCheckResult(
        passed=bool(verdict["passed"]),
        severity=dg.AssetCheckSeverity.WARN,
        metadata={k: v for k, v in verdict.items() if not isinstance(v, list)}
        | {"helping": ", ".join(verdict["helping"]), "losing_at_max": ", ".join(verdict["losing_at_max"])},
        description=text,
    )
