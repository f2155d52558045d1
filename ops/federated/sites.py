"""Sites (hospitals) and tile classes: what each site holds, how its tiles get a class, and experimental splits.

A *site root* is a folder only that site's process reads. It holds either

* tile stores as ``tissue_tiles`` writes them (``**/tiles.parquet`` beside ``tiles.zarr``), optionally with a
  ``labels.csv`` (``slide,label`` for a class per slide, or ``slide,tile_index,label`` per tile); without it the
  demo rule labels each tile from the stand-in annotator's DAB-region share, or
* a prepared ``crops.npz`` (``images uint8 [N, R, R, 3]``, ``labels int64 [N]``), which experiments write when they
  re-split pooled tiles into IID / non-IID sites.

Slides map to sites through a CSV (``slide,site``) or, by default, one site per slide.
"""

from __future__ import annotations

import csv
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from ops.labelling.demo_annotator import DAB_REGION, DemoAnnotatorConfig, class_shares, demo_annotate
from ops.slides.tile_store import open_tile_array

CLASS_NAMES = ("dab_negative", "dab_positive")  # the demo's two tile classes


@dataclass(frozen=True)
class SiteData:
    """One site's training set at the GAN's resolution."""

    images: np.ndarray  # uint8 [N, R, R, 3]
    labels: np.ndarray  # int64 [N]
    slides: tuple[str, ...]  # opaque slide ids the images come from (empty for prepared sets)

    def class_shares(self, n_classes: int) -> list[float]:
        return (np.bincount(self.labels, minlength=n_classes)[:n_classes] / max(len(self.labels), 1)).tolist()


def read_site_map(path: str | os.PathLike[str], slides: list[str]) -> dict[str, str]:
    """Slide -> site from a CSV with columns ``slide,site``; every listed slide must be mapped."""
    path = Path(path)
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    if not rows or not {"slide", "site"} <= set(rows[0]):
        raise ValueError(f"{path}: expected a CSV with columns slide,site; add that header and one row per slide")
    mapping = {r["slide"].strip(): r["site"].strip() for r in rows}
    missing = sorted(set(slides) - set(mapping))
    if missing:
        raise ValueError(f"{path}: slides {missing} have no site; add a row `slide,site` for each")
    return {s: mapping[s] for s in slides}


def downsample_to(tile: np.ndarray, resolution: int) -> np.ndarray:
    """Area-average a square ``uint8`` tile to ``resolution`` px (its side must be a multiple)."""
    side = tile.shape[0]
    if side % resolution:
        raise ValueError(f"tile side {side} px is not a multiple of the GAN resolution {resolution} px")
    d = side // resolution
    return tile.reshape(resolution, d, resolution, d, 3).mean(axis=(1, 3)).round().astype(np.uint8)


def dab_label(tile: np.ndarray, mpp: float, threshold: float, work_px: int = 128) -> int:
    """Demo class of a tile: 1 when the stand-in annotator's DAB region covers more than ``threshold`` of it.

    The tile is first reduced to ``work_px`` (the annotator's rules are in µm, so its mpp is scaled to match), which
    keeps labelling at ~10 ms a tile.
    """
    d = max(1, tile.shape[0] // work_px)
    small = downsample_to(tile, tile.shape[0] // d)
    shares = class_shares(demo_annotate(small, DemoAnnotatorConfig(mpp=mpp * d)))
    return int(shares[DAB_REGION] > threshold)


def _csv_labels(path: Path) -> dict[tuple[str, int | None], int]:
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    if not rows or not {"slide", "label"} <= set(rows[0]):
        raise ValueError(f"{path}: expected columns slide,label (per slide) or slide,tile_index,label (per tile)")
    per_tile = "tile_index" in rows[0]
    return {(r["slide"], int(r["tile_index"]) if per_tile else None): int(r["label"]) for r in rows}


def load_site(root: str | os.PathLike[str], resolution: int, dab_threshold: float = 0.5) -> SiteData:
    """Everything a site trains on, read from its own root (see the module docstring for the layouts).

    ``root`` may list several folders separated by ``os.pathsep`` (a site holding several slides' tile stores).

    Raises:
        FileNotFoundError: the root holds neither tile stores nor ``crops.npz``.
        ValueError: a ``labels.csv`` misses a tile, or tiles are not a multiple of ``resolution``.
    """
    roots = [Path(p) for p in str(root).split(os.pathsep) if p]
    prepared = roots[0] / "crops.npz"
    if len(roots) == 1 and prepared.exists():
        with np.load(prepared) as data:
            return SiteData(data["images"], data["labels"].astype(np.int64), ())
    tables = sorted(t for r in roots for t in r.rglob("tiles.parquet"))
    if not tables:
        raise FileNotFoundError(
            f"site root {root} holds no tile store (tiles.parquet + tiles.zarr) and no crops.npz; point the site's "
            "SuperNode at the folder with its tiles"
        )
    images, labels, slides = [], [], []
    for table_path in tables:
        owner = next(r for r in roots if table_path.is_relative_to(r))
        table = pd.read_parquet(table_path)
        if table.empty:
            continue
        x, y = _read_store(table, table_path.parent / "tiles.zarr", owner / "labels.csv", resolution, dab_threshold)
        images.append(x)
        labels.append(y)
        slides.append(str(table["slide_id"].iloc[0]))
    if not images:
        raise ValueError(f"site root {root}: its tile stores are empty; tile the site's slides first")
    return SiteData(np.concatenate(images), np.concatenate(labels), tuple(slides))


def tiles_from_table(table: pd.DataFrame, resolution: int, dab_threshold: float = 0.5) -> SiteData:
    """The tiles a tile table lists (``training_tiles``' columns ``store``, ``tile_index``, ``slide``, ``slide_id``,
    ``mpp``), classed as a site would class them: ``labels.csv`` beside a store's ``tiles.zarr``, else the demo rule.

    For the evaluation side, which may read held-out slides; a site's own process uses :func:`load_site`.

    Raises:
        ValueError: the table is empty or lacks a column, or a ``labels.csv`` misses a tile.
    """
    need = {"store", "tile_index", "slide", "slide_id", "mpp"}
    if table.empty or not need <= set(table.columns):
        raise ValueError(
            f"tile table: expected rows with columns {sorted(need)}, received {len(table)} rows with "
            f"{sorted(table.columns)}; pass the training_tiles table"
        )
    images, labels = [], []
    for store, rows in table.groupby("store", sort=True):
        x, y = _read_store(rows, Path(store), Path(store).parent / "labels.csv", resolution, dab_threshold)
        images.append(x)
        labels.append(y)
    return SiteData(np.concatenate(images), np.concatenate(labels), tuple(sorted(table["slide_id"].unique())))


def _read_store(
    table: pd.DataFrame, store: Path, csv_path: Path, resolution: int, dab_threshold: float
) -> tuple[np.ndarray, np.ndarray]:
    """Tiles of one store listed in ``table`` at ``resolution`` and their classes (``csv_path`` when it exists)."""
    csv_labels = _csv_labels(csv_path) if csv_path.exists() else None
    array = open_tile_array(store)
    images, labels = [], []
    for row in table.itertuples(index=False):
        tile = np.asarray(array[int(row.tile_index)])
        if csv_labels is None:
            label = dab_label(tile, float(row.mpp), dab_threshold)
        else:
            key = (str(row.slide), int(row.tile_index))
            label = csv_labels.get(key, csv_labels.get((str(row.slide), None)))
            if label is None:
                raise ValueError(f"{csv_path}: no label for slide {row.slide!r} tile {row.tile_index}")
        images.append(downsample_to(tile, resolution))
        labels.append(label)
    return np.stack(images), np.asarray(labels, np.int64)


def write_prepared(root: str | os.PathLike[str], images: np.ndarray, labels: np.ndarray) -> Path:
    """Write a prepared site (``crops.npz``) atomically: temp file, then rename."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    tmp = root / f".crops.{os.getpid()}.npz"
    np.savez(tmp, images=images, labels=labels.astype(np.int64))
    os.replace(tmp, root / "crops.npz")
    return root / "crops.npz"


def split_sites(labels: np.ndarray, n_sites: int, majority: float | None = None, seed: int = 0) -> list[np.ndarray]:
    """Indices of each site's samples: IID (``majority=None``) or non-IID with a majority class per site.

    Non-IID: site k's majority class is ``k % n_classes`` and ``majority`` of its samples come from it (the paper
    sweeps 60-90 %); the rest are drawn from the other classes. Sites get equal sizes, as many as the scarcest
    class allows.
    """
    rng = np.random.default_rng(seed)
    n = len(labels)
    if majority is None:
        return [np.sort(part) for part in np.array_split(rng.permutation(n), n_sites)]
    if not 0.0 < majority < 1.0:
        raise ValueError(f"majority: expected a share in (0, 1), received {majority}")
    classes = np.unique(labels)
    pools = {c: list(rng.permutation(np.flatnonzero(labels == c))) for c in classes}
    size = n // n_sites
    sites = []
    for k in range(n_sites):
        major = classes[k % len(classes)]
        want_major = int(round(majority * size))
        take = [pools[major].pop() for _ in range(min(want_major, len(pools[major])))]
        others = [c for c in classes if c != major]
        while len(take) < size and any(pools[c] for c in others):
            for c in others:
                if pools[c] and len(take) < size:
                    take.append(pools[c].pop())
        sites.append(np.sort(np.asarray(take, np.int64)))
    return sites
