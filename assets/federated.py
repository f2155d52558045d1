"""The federated class-conditional GAN: sites that keep their tiles train one generator through Flower.

``federated_gan`` decides which slides belong to which site (a CSV, or one site per slide), starts a SuperLink and
one SuperNode per site on loopback (or attaches to a running SuperLink), submits the Flower App and records the
lineage: rounds, sites, per-site samples and class shares, per-round metrics, the MLflow run and the registered
model. It hands each SuperNode the *path* of its site's tiles and never opens a tile store itself.
"""

import json
import os
import time

import dagster as dg
import numpy as np
import pandas as pd
import torch
from pydantic import Field

from assets.lineage import content_hash, png_markdown
from ops.common.images import image_grid_png
from ops.federated.networks import CondGanConfig, CondGenerator
from ops.federated.runtime import MODEL_FILE, MODEL_FORMAT, Federation, Site
from ops.federated.sites import read_site_map
from ops.federated.training import sample
from resources import FactoryStorage, MlflowTracking
from resources.references import FederatedGanRef, TrainingTilesRef

FEDERATED_CODE_VERSION = "federated-1"
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
    slides = sorted(pd.read_parquet(training_tiles.path, columns=["slide"])["slide"].unique())
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

    payload = torch.load(out / MODEL_FILE, map_location="cpu", weights_only=True)
    if payload.get("format") != MODEL_FORMAT:
        raise ValueError(f"{out / MODEL_FILE}: expected format {MODEL_FORMAT!r}; rerun federated_gan")
    G = CondGenerator(CondGanConfig.from_dict(payload["config"]))
    G.load_state_dict(payload["G"])
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
