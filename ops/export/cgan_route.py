"""Class-conditional tiles from the federated GAN as an export route (``cgan_federated``).

The federated GAN (``ops.federated``) draws a tile *of a requested class*; it has no pixel mask. Its rows in the
export carry the class (``tile_class``) instead of a mask (``mask`` is empty), for tile classifiers, as the paper
uses them. A sample is reproducible from its seed alone: the seed picks the class (``seed % n_classes``, so each
batch is balanced) and draws the noise.

The memorization check compares these tiles with what the federated GAN trained on: whole training tiles
area-averaged to its resolution (not the StyleGAN route's random crops), in pixel space.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from importlib.metadata import version as package_version
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from ops.export.memorization import check_memorization
from ops.federated.networks import CondGenerator
from ops.federated.sites import downsample_to
from ops.federated.training import to_uint8_images
from ops.slides.tile_store import open_tile_array

CGAN_ROUTE = "cgan_federated"
LATENTS_FILE = "cgan_latents.npz"


@dataclass
class ConditionalBatch:
    """Generated tiles of one export batch (all arrays share the sample axis)."""

    seeds: np.ndarray  # int64 [B]
    tile_class: np.ndarray  # int64 [B], the class each tile was generated for
    z: np.ndarray  # float32 [B, z_dim], the noise drawn from each seed
    images: np.ndarray  # uint8 [B, R, R, 3]

    def latent_arrays(self) -> dict[str, np.ndarray]:
        """What regenerates the batch (``cgan_latents.npz`` in the export)."""
        return {"seeds": self.seeds, "tile_class": self.tile_class, "z": self.z}


@torch.no_grad()
def synthesize_class_tiles(G: CondGenerator, seeds: np.ndarray, device: torch.device | str = "cpu") -> ConditionalBatch:
    """One tile per seed, of class ``seed % n_classes``, from noise drawn with that seed alone.

    Args:
        G: The federation's global generator (``ops.federated.training.load_global_generator``).
        seeds: One seed per tile.
        device: Where the generator runs.
    """
    seeds = np.asarray(seeds, np.int64)
    G = G.to(device).eval()
    z = np.stack([torch.randn(G.cfg.z_dim, generator=torch.Generator().manual_seed(int(s))).numpy() for s in seeds])
    classes = seeds % G.cfg.n_classes
    images = [
        to_uint8_images(G(torch.from_numpy(z[i : i + 64]).to(device), torch.from_numpy(classes[i : i + 64]).to(device)))
        for i in range(0, len(seeds), 64)
    ]
    empty = np.zeros((0, G.cfg.resolution, G.cfg.resolution, 3), np.uint8)
    return ConditionalBatch(seeds, classes, z.astype(np.float32), np.concatenate(images) if images else empty)


def sample_id(seed: int) -> str:
    return f"cgan_{int(seed):010d}"


def cgan_lineage(model: str, lineage_file: str, mlflow_run: str | None, model_version: str) -> dict:
    """The export lineage entries of the federated GAN, with the slide ids its sites trained on (from the
    ServerApp's lineage file: names and counts only, never site data)."""
    rounds = json.loads(Path(lineage_file).read_text())
    sites = sorted({s["site"] for r in rounds["rounds"] for s in r["sites"]})
    slides = sorted({x for r in rounds["rounds"] for s in r["sites"] for x in s["slides"].split(";") if x})
    return {
        "cgan_checkpoint": model,
        "cgan_mlflow_run": mlflow_run or "",
        "cgan_model_version": model_version,
        "cgan_flower_run": str(rounds.get("flower_run_id", rounds.get("run_id", ""))),
        "cgan_rounds": len(rounds["rounds"]),
        "cgan_sites": sites,
        "cgan_source_slides": slides,
    }


def manifest_rows(batch: ConditionalBatch, index: int, lineage: dict, mpp: float) -> pd.DataFrame:
    """One manifest row per generated tile: class, seed, latents and lineage; ``mask`` empty (none exists)."""
    ids = [sample_id(s) for s in batch.seeds]
    return pd.DataFrame(
        {
            "sample_id": ids,
            "image": [f"batches/{index:03d}/images/{i}.png" for i in ids],
            "mask": pd.Series([None] * len(ids), dtype="string"),
            "tile_class": pd.Series(batch.tile_class, dtype="Int64"),
            "batch": index,
            "seed": batch.seeds,
            "latents": [f"batches/{index:03d}/{LATENTS_FILE}#{j}" for j in range(len(ids))],
            "uncertainty": np.full(len(ids), np.nan, np.float32),
            "mpp": mpp,
            "generator": CGAN_ROUTE,
            "cgan_mlflow_run": lineage["cgan_mlflow_run"],
            "cgan_model_version": lineage["cgan_model_version"],
            "cgan_flower_run": lineage["cgan_flower_run"],
            "source_slides": ";".join(lineage["cgan_source_slides"]),
            "histofactory_version": package_version("histofactory"),
            "torch_version": torch.__version__,
        }
    )


def training_bank(tiles: pd.DataFrame, resolution: int, limit: int, seed: int = 4242) -> np.ndarray:
    """What the federated GAN trained on, for the memorization check: up to ``limit`` training tiles (columns
    ``store``, ``tile_index``), each area-averaged whole to ``resolution`` as the sites do."""
    if tiles.empty:
        raise ValueError("the memorization check needs training tiles; training_tiles has none in its train split")
    rows = tiles.sample(min(limit, len(tiles)), random_state=seed) if len(tiles) > limit else tiles
    out = []
    for store, part in rows.groupby("store", sort=True):
        array = open_tile_array(store)
        out += [downsample_to(np.asarray(array[int(i)]), resolution) for i in part["tile_index"]]
    return np.stack(out)


def memorization(images: np.ndarray, tiles: pd.DataFrame, limit: int, quantile: float) -> pd.DataFrame:
    """:func:`ops.export.memorization.check_memorization` of the generated tiles against the training tiles at the
    generator's resolution, in pixel space (the feature space belongs to the StyleGAN discriminator)."""
    bank = training_bank(tiles, images.shape[1], limit)
    return check_memorization(images, bank, checkpoint=None, quantile=quantile, pixel_size=min(32, images.shape[1]))


def card_lines(lineage: dict) -> str:
    """How the route made its tiles, for the dataset card."""
    return f"""- **{CGAN_ROUTE}** (federated-GAN paper): tiles of a requested class from a class-conditional GAN that
  {len(lineage["cgan_sites"])} sites trained together with FedAvg ({lineage["cgan_rounds"]} rounds, Flower run
  `{lineage["cgan_flower_run"]}`); the tiles never left their sites. **These rows have no pixel mask** (`mask`
  empty): column `tile_class` holds the class the tile was generated for, as the sites labelled their tiles (the
  demo: 0 = DAB-negative, 1 = DAB-positive). Use them for tile classification
  (`SyntheticTileClassDataset`), not segmentation. Class = seed mod number of classes. Model: MLflow run
  `{lineage["cgan_mlflow_run"]}`, version `{lineage["cgan_model_version"]}`. Latents:
  `batches/<b>/{LATENTS_FILE}` (`seeds`, `tile_class`, `z`)."""


def tile_class_counts(manifest: pd.DataFrame) -> dict[str, int]:
    """Kept tiles per class of the route (empty when the export has none)."""
    if "tile_class" not in manifest:
        return {}
    rows = manifest.loc[manifest["generator"] == CGAN_ROUTE, "tile_class"].dropna()
    return {str(k): int(v) for k, v in rows.value_counts().sort_index().items()}


def require_resolution(lineage: dict, resolution: int) -> None:
    """The export writes one resolution: the conditional tiles must match the other routes'."""
    if lineage.setdefault("resolution", resolution) != resolution:
        raise ValueError(
            f"the other routes make {lineage['resolution']}-px pairs but federated_gan {resolution}-px tiles; "
            f"export {CGAN_ROUTE} separately (generators: [{CGAN_ROUTE}]) or set federated_gan's resolution to "
            f"{lineage['resolution']}"
        )
