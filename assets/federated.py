"""The federated class-conditional GAN: sites that keep their tiles train one generator through Flower.

``federated_gan`` decides which training slides belong to which site (a CSV, or one site per slide; held-out slides
never join), starts a SuperLink and one SuperNode per site on loopback (or attaches to a running SuperLink), submits
the Flower App and records the lineage: rounds, sites, per-site samples and class shares, per-round metrics, the
MLflow run and the registered model. It hands each SuperNode the *path* of its site's tiles and never opens a tile
store itself.

``federated_tile_check`` is the paper's downstream check (tile classifier on real, generated, and generated + real
tiles, scored on held-out slides). It is a separate asset because it must read tiles, which ``federated_gan`` never
does (it stands for an evaluation site that may see the held-out slides), and because its classifier settings can
change and rerun without retraining the federation.
"""

import json
import os
import time
from pathlib import Path
from typing import Literal

import dagster as dg
import numpy as np
import pandas as pd
from pydantic import Field

from assets.lineage import content_hash, png_markdown
from ops.common.images import image_grid_png
from ops.federated.downstream import ARMS, CheckSettings, TileSet, classifier_check
from ops.federated.networks import CondGanConfig
from ops.federated.runtime import MODEL_FILE, Federation, Site
from ops.federated.sites import read_site_map, tiles_from_table
from ops.federated.training import load_global_generator, sample
from resources import FactoryStorage, MlflowTracking, TorchDevice
from resources.references import FederatedGanRef, FederatedTileCheckRef, TrainingTilesRef

FEDERATED_CODE_VERSION = "federated-2"  # 2: only training slides are sites (held-out slides stay out)
TILE_CHECK_CODE_VERSION = "tile-check-1"
FEDERATED_MODEL_NAME = "histofactory-cgan-federated"


class FederatedGanConfig(dg.Config):
    """Federation, FedAvg and conditional-GAN settings (``ops.federated``)."""

    sites_csv: str | None = Field(default=None, description="CSV slide,site; unset = one site per slide.")
    rounds: int = Field(default=2, description="FedAvg rounds.")
    fraction_train: float = Field(default=1.0, description="Share of connected sites sampled per round.")
    min_sites: int = Field(default=1, description="Sites that must be connected (and sampled) for a round.")
    local_epochs: float = Field(default=1.0, description="Passes over a site's tiles per round.")
    batch_size: int = Field(default=16, description="Images per local step.")
    round_timeout: float = Field(default=300.0, description="Seconds a round waits for sites before going on.")
    run_timeout: float = Field(default=1800.0, description="Seconds the whole run may take.")
    loss: str = Field(default="cgan", description="cgan, wgan-gp or acgan.")
    backbone: str = Field(default="cnn", description="Discriminator: cnn, resnet or vit.")
    resolution: int = Field(default=32, description="Generated tile side, px (tiles are area-averaged to it).")
    dab_threshold: float = Field(default=0.5, description="Demo class: DAB-region share above which a tile is 1.")
    auth: bool = Field(default=False, description="TLS plus SuperNode authentication (only registered sites).")
    superlink: str | None = Field(
        default=None, description="Attach to this running SuperLink (host:port) instead of starting one on loopback."
    )
    root_certificates: str | None = Field(default=None, description="CA file of that SuperLink (TLS).")
    seed: int = Field(default=0, description="Seeds the initial global weights and the sites' local runs.")


def _sites(storage: FactoryStorage, slides: list[str], sites_csv: str | None) -> list[Site]:
    """Sites with the tile folders of their slides (paths only: the asset never reads them)."""
    mapping = read_site_map(sites_csv, slides) if sites_csv else {s: s for s in slides}
    by_site: dict[str, list[str]] = {}
    for slide, site in sorted(mapping.items()):
        by_site.setdefault(site, []).append(str(storage.tiles_dir(slide)))
    return [Site(name, os.pathsep.join(roots)) for name, roots in by_site.items()]


@dg.asset(
    group_name="federated",
    code_version=FEDERATED_CODE_VERSION,
    kinds={"pytorch", "mlflow"},
    pool="training",
    description="Class-conditional GAN trained with FedAvg across sites on Flower's deployment runtime.",
)
def federated_gan(
    context: dg.AssetExecutionContext,
    config: FederatedGanConfig,
    training_tiles: TrainingTilesRef,
    storage: FactoryStorage,
    mlflow_tracking: MlflowTracking,
) -> dg.MaterializeResult:
    table = pd.read_parquet(training_tiles.path, columns=["slide", "split"])
    slides = sorted(table.loc[table["split"] == "train", "slide"].unique())
    sites = _sites(storage, slides, config.sites_csv)
    gan = CondGanConfig(resolution=config.resolution, loss=config.loss, backbone=config.backbone)
    run_key = content_hash({"config": config.model_dump(), "sites": [(s.name, str(s.root)) for s in sites]})
    run_dir = storage.root / "federated" / run_key
    out = run_dir / f"out-{time.time_ns()}"
    run_config = {
        "gan-config": json.dumps(gan.to_dict()),
        "num-rounds": config.rounds,
        "fraction-train": config.fraction_train,
        "min-sites": config.min_sites,
        "local-epochs": config.local_epochs,
        "batch-size": config.batch_size,
        "round-timeout": config.round_timeout,
        "seed": config.seed,
        "dab-threshold": config.dab_threshold,
    }
    context.log.info(f"federation of {len(sites)} sites: {[s.name for s in sites]}")
    start = time.perf_counter()
    federation = Federation(
        run_dir / "runtime",
        [] if config.superlink else sites,
        auth=config.auth,
        address=config.superlink,
        root_certificates=config.root_certificates,
    )
    with federation as fed:
        lineage = fed.run(run_config, out, timeout=config.run_timeout)
    seconds = time.perf_counter() - start

    G = load_global_generator(out / MODEL_FILE)
    per_class = np.repeat(np.arange(gan.n_classes), 8)
    grid = image_grid_png(sample(G, per_class, seed=config.seed), columns=8, scale=2)
    (out / "samples.png").write_bytes(grid)

    participants = {r["round"]: sorted(s["site"] for s in r["sites"]) for r in lineage["rounds"]}
    site_stats = {s["site"]: s for r in lineage["rounds"] for s in r["sites"]}  # latest reply of each site
    tags = {"dagster_run_id": context.run.run_id, "dagster_asset": "federated_gan", "run_key": run_key}
    with mlflow_tracking.start_run(f"federated-{config.loss}-{run_key[:8]}", tags) as run:
        import mlflow

        mlflow.log_params({**config.model_dump(), "sites": len(sites), "flower_run_id": lineage["flower_run_id"]})
        for r in lineage["rounds"]:
            mlflow.log_metrics({f"fedavg_{k}": v for k, v in r["aggregated"].items()}, step=r["round"])
            mlflow.log_metric("sites_replied", len(r["sites"]), step=r["round"])
            for s in r["sites"]:
                mlflow.log_metrics({f"{s['site']}_{k}": v for k, v in s["metrics"].items()}, step=r["round"])
        mlflow.log_dict(lineage, "lineage.json")
        mlflow.log_artifact(str(out / MODEL_FILE), "model")
        mlflow.log_artifact(str(out / "samples.png"), "samples")
        version = mlflow_tracking.register(FEDERATED_MODEL_NAME, run.info.run_id, "model")
    return dg.MaterializeResult(
        value=FederatedGanRef(
            path=str(out / MODEL_FILE),
            lineage=str(out / "lineage.json"),
            mlflow_run_id=run.info.run_id,
            model_version=version,
            participants={str(k): v for k, v in participants.items()},
            resolution=config.resolution,
            content_hash=run_key,
        ),
        metadata={
            "rounds": len(lineage["rounds"]),
            "sites": len(sites),
            "participants": dg.MetadataValue.json({str(k): v for k, v in participants.items()}),
            "site_samples": dg.MetadataValue.json(
                {k: int(v["metrics"]["num-examples"]) for k, v in site_stats.items()}
            ),
            "site_class_shares": dg.MetadataValue.json(
                {k: [v["metrics"][f"share-{c}"] for c in range(gan.n_classes)] for k, v in site_stats.items()}
            ),
            "round_metrics": dg.MetadataValue.json(
                [{"round": r["round"], **r["aggregated"]} for r in lineage["rounds"]]
            ),
            "unanswered": dg.MetadataValue.json(
                {str(r["round"]): r["missing"] + len(r["failed"]) for r in lineage["rounds"]}
            ),
            "seconds": round(seconds, 1),
            "model": dg.MetadataValue.path(str(out / MODEL_FILE)),
            "mlflow_run_id": run.info.run_id,
            "model_version": version,
            "flower_run_id": str(lineage["flower_run_id"]),
            "samples": png_markdown(grid, "conditional samples, one row per class"),
        },
    )


class TileCheckConfig(dg.Config):
    """The paper's downstream check (``ops.federated.downstream``): one tile classifier per arm."""

    backbone: Literal["cnn", "vit"] = Field(default="cnn", description="Tile classifier: small CNN or small ViT.")
    steps: int = Field(default=300, ge=1, description="Optimiser steps per arm.")
    batch_size: int = Field(default=32, ge=1, description="Tiles per step.")
    n_generated: int | None = Field(
        default=None, ge=1, description="Generated tiles per arm; unset = as many as real training tiles."
    )
    dab_threshold: float = Field(
        default=0.5, ge=0, le=1, description="Demo class rule, as federated_gan's (labels.csv beside a store wins)."
    )
    seed: int = Field(default=0, description="Seeds the generated tiles and every classifier.")


@dg.asset(
    group_name="federated",
    code_version=TILE_CHECK_CODE_VERSION,
    kinds={"pytorch", "mlflow"},
    pool="training",
    description="Tile classifier trained on real, generated, and generated + real tiles; accuracy, F1 and recall "
    "per class on held-out slides (the federated-GAN paper's check).",
)
def federated_tile_check(
    context: dg.AssetExecutionContext,
    config: TileCheckConfig,
    federated_gan: FederatedGanRef,
    training_tiles: TrainingTilesRef,
    storage: FactoryStorage,
    mlflow_tracking: MlflowTracking,
    torch_device: TorchDevice,
) -> dg.MaterializeResult:
    G = load_global_generator(federated_gan.path)
    torch_device.device()  # applies the thread setting; the small classifiers train on the CPU
    n_classes = G.cfg.n_classes
    table = pd.read_parquet(training_tiles.path)
    train = tiles_from_table(table[table["split"] == "train"], G.cfg.resolution, config.dab_threshold)
    test = tiles_from_table(table[table["split"] == "holdout"], G.cfg.resolution, config.dab_threshold)
    lineage = json.loads(Path(federated_gan.lineage).read_text())
    seen = {slide for r in lineage["rounds"] for s in r["sites"] for slide in s["slides"].split(";") if slide}
    leaked = sorted(seen & set(test.slides))
    if leaked:  # only a single-slide split (spatial hold-out) gets here: its train and test share the slide
        context.log.warning(f"the generator was trained on held-out slides {leaked}: scores are optimistic")
    settings = CheckSettings(config.backbone, config.steps, config.batch_size, config.n_generated, config.seed)
    start = time.perf_counter()
    results = classifier_check(
        G, TileSet(train.images, train.labels), TileSet(test.images, test.labels), n_classes, settings
    )
    seconds = time.perf_counter() - start
    metrics = {k: v for arm in ARMS for k, v in results[arm].to_metadata(arm).items()}
    counts = {"train": train.class_shares(n_classes), "holdout": test.class_shares(n_classes)}
    out = storage.root / "federated" / "tile_check" / f"{federated_gan.content_hash}-{config.backbone}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    payload = {
        "metrics": metrics,
        "config": config.model_dump(),
        "tiles": {"train": len(train.labels), "holdout": len(test.labels)},
        "class_shares": counts,
        "heldout_slides_seen_by_generator": leaked,
    }
    tmp = out.with_name(f".{out.name}.tmp")
    tmp.write_text(json.dumps(payload, indent=1))
    tmp.replace(out)
    tags = {"dagster_run_id": context.run.run_id, "dagster_asset": "federated_tile_check"}
    with mlflow_tracking.start_run(f"federated-tile-check-{config.backbone}", tags) as run:
        import mlflow

        mlflow.log_params(
            {**config.model_dump(), "federated_mlflow_run": federated_gan.mlflow_run_id, "model": federated_gan.path}
        )
        mlflow.log_metrics(metrics)
        mlflow.log_dict(payload, "tile_check.json")
    return dg.MaterializeResult(
        value=FederatedTileCheckRef(
            path=str(out), mlflow_run_id=run.info.run_id, content_hash=federated_gan.content_hash
        ),
        metadata={
            **metrics,
            "train_tiles": len(train.labels),
            "holdout_tiles": len(test.labels),
            "class_shares": dg.MetadataValue.json(counts),
            "heldout_slides_seen_by_generator": dg.MetadataValue.json(leaked),
            "backbone": config.backbone,
            "seconds": round(seconds, 1),
            "mlflow_run_id": run.info.run_id,
        },
    )
