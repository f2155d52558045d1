"""Training data for the generators, streamed from the per-slide zarr tile stores.

Splits are by slide (or by patient when a slide-to-patient table is given), never by tile: tiles of one slide are
correlated, and a tile-level split would leak. Crops are read from the zarr stores on demand (one chunk per tile), so
the training set is never copied into memory.
"""

from __future__ import annotations

import warnings
from collections import OrderedDict
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch

from ops.labelling.slide_annotations import open_mask_array
from ops.slides.tile_store import open_tile_array


@dataclass(frozen=True)
class SplitResult:
    """Which tiles train and which are held out, and how the split was made."""

    train: pd.DataFrame  # rows of the tile table (with a ``store`` column) used for training
    holdout: pd.DataFrame  # rows held out (evaluation / SWD reference)
    folds: dict[str, int]  # slide (or patient) -> fold
    k: int
    mode: str  # "slide", "patient" or "spatial"


def assign_folds(groups: list[str], k: int = 5, seed: int = 0) -> tuple[dict[str, int], int]:
    """Deterministic fold per group (slide or patient); with fewer groups than folds, k = number of groups."""
    groups = sorted(set(groups))
    k_eff = max(1, min(k, len(groups)))
    order = np.random.default_rng(seed).permutation(len(groups))
    return {groups[i]: int(rank % k_eff) for rank, i in enumerate(order)}, k_eff


def split_tiles(
    tiles: pd.DataFrame,
    k: int = 5,
    holdout_fold: int = 0,
    seed: int = 0,
    patients: dict[str, str] | None = None,
    spatial_holdout: float = 0.2,
) -> SplitResult:
    """Split a tile table (columns ``slide``, ``x``, ``y``, ...) into train and held-out parts.

    Args:
        tiles: Union of the slides' tile tables.
        k: Folds (5 as in HDGAN's cross-validation); reduced to the number of groups when there are fewer.
        holdout_fold: The fold held out (0..k-1).
        seed: Seeds the fold assignment.
        patients: Optional slide -> patient map: all slides of a patient land in one fold.
        spatial_holdout: With a single slide, the share of its width (right-most tiles) held out instead.

    Raises:
        ValueError: no tiles, an unknown holdout fold, or slides missing from ``patients``.
    """
    if tiles.empty:
        raise ValueError("no tiles to split: every slide's tile store is empty. Check the tiling metadata.")
    slides = sorted(tiles["slide"].unique())
    if patients is not None:
        missing = [s for s in slides if s not in patients]
        if missing:
            raise ValueError(f"slide -> patient table has no entry for slides {missing}; add them or drop the table")
        group_of = {s: patients[s] for s in slides}
        mode = "patient"
    else:
        group_of = {s: s for s in slides}
        mode = "slide"
    if len(set(group_of.values())) == 1:
        warnings.warn(
            f"only one {mode} ({slides[0]!r}): holding out the right-most {spatial_holdout:.0%} of it instead of a "
            "fold. Scores on this hold-out are optimistic (same slide).",
            stacklevel=2,
        )
        cut = tiles["x"].quantile(1 - spatial_holdout)
        held = tiles["x"] >= cut
        return SplitResult(
            tiles[~held].reset_index(drop=True),
            tiles[held].reset_index(drop=True),
            {next(iter(group_of.values())): 0},
            1,
            "spatial",
        )
    folds, k_eff = assign_folds(list(group_of.values()), k, seed)
    if not 0 <= holdout_fold < k_eff:
        raise ValueError(f"holdout_fold must be in 0..{k_eff - 1} (k={k_eff}), received {holdout_fold}")
    fold = tiles["slide"].map(lambda s: folds[group_of[s]])
    held = fold == holdout_fold
    return SplitResult(tiles[~held].reset_index(drop=True), tiles[held].reset_index(drop=True), folds, k_eff, mode)


class TileCropSampler:
    """Random crops of stored tiles as a float batch ``[N, 3, R, R]`` in [-1, 1].

    Reads one zarr chunk per tile and keeps a small LRU cache of decoded tiles, so memory is bounded by
    ``cache_tiles`` tiles whatever the dataset size.

    Args:
        tiles: Tile table rows with columns ``store`` (path of the tile store) and ``tile_index``.
        resolution: Output crop edge in pixels (the GAN's resolution).
        downsample: Integer factor applied to a ``resolution * downsample`` crop (1 = native tile resolution).
        seed: Seeds crop positions; the same seed gives the same stream of batches.
        crops_per_tile: Crops taken from each tile read (amortises chunk decoding).
        cache_tiles: Decoded tiles kept in memory.
    """

    def __init__(
        self,
        tiles: pd.DataFrame,
        resolution: int,
        downsample: int = 1,
        seed: int = 0,
        crops_per_tile: int = 4,
        cache_tiles: int = 32,
    ) -> None:
        if tiles.empty:
            raise ValueError("TileCropSampler needs at least one tile")
        self.refs = list(zip(tiles["store"].astype(str), tiles["tile_index"].astype(int), strict=True))
        self.resolution = resolution
        self.downsample = downsample
        self.crops_per_tile = crops_per_tile
        self.rng = np.random.default_rng(seed)
        self._arrays: dict[str, object] = {}
        self._cache: OrderedDict[tuple[str, int], np.ndarray] = OrderedDict()
        self._cache_tiles = cache_tiles

    def _tile(self, store: str, index: int) -> np.ndarray:
        key = (store, index)
        if key in self._cache:
            self._cache.move_to_end(key)
            return self._cache[key]
        if store not in self._arrays:
            self._arrays[store] = open_tile_array(store)
        tile = np.asarray(self._arrays[store][index])
        self._cache[key] = tile
        if len(self._cache) > self._cache_tiles:
            self._cache.popitem(last=False)
        return tile

    def batch_uint8(self, n: int) -> np.ndarray:
        """``n`` crops as uint8 ``[n, R, R, 3]``."""
        size = self.resolution * self.downsample
        out = np.empty((n, self.resolution, self.resolution, 3), np.uint8)
        for i in range(n):
            if i % self.crops_per_tile == 0:
                tile = self._tile(*self.refs[self.rng.integers(len(self.refs))])
                if tile.shape[0] < size:
                    raise ValueError(f"tiles are {tile.shape[0]} px, smaller than the {size} px crop requested")
            y, x = self.rng.integers(0, tile.shape[0] - size + 1, size=2)
            crop = tile[y : y + size, x : x + size]
            if self.downsample > 1:
                d = self.downsample
                crop = crop.reshape(self.resolution, d, self.resolution, d, 3).mean(axis=(1, 3)).round()
            out[i] = crop
        return out

    def batch(self, n: int, device: torch.device | str = "cpu") -> torch.Tensor:
        """``n`` crops as float ``[n, 3, R, R]`` in [-1, 1] on ``device``."""
        x = torch.from_numpy(self.batch_uint8(n)).to(device)
        return x.permute(0, 3, 1, 2).float().div(127.5).sub(1.0)


TRAINING_CROP_SEED = 777  # crop positions of the unlabelled training crops every route and matcher shares


def training_crops(tiles: pd.DataFrame, resolution: int, count: int) -> np.ndarray:
    """``count`` seeded uint8 crops ``[count, R, R, 3]`` of the training slides' kept tiles (``split == "train"``):
    the unlabelled crops the budget routes learn appearance from and the GAN's samples are colour-matched to, one
    seed so that both see the same crops."""
    train = tiles[tiles["split"] == "train"] if "split" in tiles else tiles.iloc[:0]
    if train.empty:
        raise ValueError("the tile table has no training tiles (split == 'train') to crop; materialize training_tiles")
    return TileCropSampler(train, resolution, seed=TRAINING_CROP_SEED).batch_uint8(count)


class PairCropSampler:
    """Random aligned crops of (tile image, tile mask) for segmentation: the same window cut from both.

    Masks live in a mask store (``ops.labelling.slide_annotations.write_mask_store``) beside the tile stores; a row
    pairs
    ``store[tile_index]`` with ``mask_store[mask_index]``. Crops may contain ``IGNORE_INDEX`` pixels: the loss (or
    the caller's filter) decides what to do with them. Memory is bounded by ``cache_tiles`` decoded pairs.

    Args:
        tiles: Rows with columns ``store``, ``tile_index``, ``mask_store``, ``mask_index``.
        resolution: Crop edge in pixels (tile pixels; no resampling, so labels stay exact).
        seed: Seeds tile choice, crop positions and augmentation; the same seed gives the same stream of batches.
        crops_per_tile: Crops taken from each pair read (amortises chunk decoding).
        cache_tiles: Decoded pairs kept in memory.
        augment: Random dihedral transform per crop (one of 4 rotations x optional flip), applied to image and mask
            alike. Off by default.

    Raises:
        ValueError: No rows, missing columns, an image store and a mask store with different tile sizes, or a
            resolution larger than the tiles.
    """

    COLUMNS = ("store", "tile_index", "mask_store", "mask_index")

    def __init__(
        self,
        tiles: pd.DataFrame,
        resolution: int,
        seed: int = 0,
        crops_per_tile: int = 4,
        cache_tiles: int = 32,
        augment: bool = False,
    ) -> None:
        if tiles.empty:
            raise ValueError("PairCropSampler needs at least one (tile, mask) row")
        missing = [c for c in self.COLUMNS if c not in tiles.columns]
        if missing:
            raise ValueError(f"PairCropSampler: tile table lacks columns {missing}; expected {list(self.COLUMNS)}")
        self.refs = list(
            zip(
                tiles["store"].astype(str),
                tiles["tile_index"].astype(int),
                tiles["mask_store"].astype(str),
                tiles["mask_index"].astype(int),
                strict=True,
            )
        )
        self._images = {s: open_tile_array(s) for s in sorted({r[0] for r in self.refs})}
        self._masks = {s: open_mask_array(s) for s in sorted({r[2] for r in self.refs})}
        for store, mask_store in sorted({(r[0], r[2]) for r in self.refs}):  # fail early, before training starts
            img, msk = self._images[store].shape[1:3], self._masks[mask_store].shape[1:3]
            if img != msk:
                raise ValueError(
                    f"tile store {store} holds {img[0]}x{img[1]} tiles but mask store {mask_store} holds "
                    f"{msk[0]}x{msk[1]} masks; expected equal sizes. Fix: rasterise the masks with out_size equal "
                    f"to the tile size"
                )
            if img[0] < resolution or img[1] < resolution:
                raise ValueError(
                    f"tile store {store}: tiles are {img[0]}x{img[1]} px, smaller than the "
                    f"{resolution} px crop requested"
                )
        self.resolution = resolution
        self.crops_per_tile = crops_per_tile
        self.augment = augment
        self.rng = np.random.default_rng(seed)
        self._cache: OrderedDict[int, tuple[np.ndarray, np.ndarray]] = OrderedDict()
        self._cache_tiles = cache_tiles

    def _pair(self, ref: int) -> tuple[np.ndarray, np.ndarray]:
        if ref in self._cache:
            self._cache.move_to_end(ref)
            return self._cache[ref]
        store, index, mask_store, mask_index = self.refs[ref]
        pair = np.asarray(self._images[store][index]), np.asarray(self._masks[mask_store][mask_index])
        self._cache[ref] = pair
        if len(self._cache) > self._cache_tiles:
            self._cache.popitem(last=False)
        return pair

    def batch_uint8(self, n: int) -> tuple[np.ndarray, np.ndarray]:
        """``n`` aligned crops: images uint8 ``[n, R, R, 3]`` and masks uint8 ``[n, R, R]``."""
        r = self.resolution
        images = np.empty((n, r, r, 3), np.uint8)
        masks = np.empty((n, r, r), np.uint8)
        for i in range(n):  # loop over crops; each is a slice copy
            if i % self.crops_per_tile == 0:
                image, mask = self._pair(int(self.rng.integers(len(self.refs))))
            y = int(self.rng.integers(0, image.shape[0] - r + 1))
            x = int(self.rng.integers(0, image.shape[1] - r + 1))
            crop_image, crop_mask = image[y : y + r, x : x + r], mask[y : y + r, x : x + r]
            if self.augment:
                k = int(self.rng.integers(8))  # rotation k % 4, flip when k >= 4
                crop_image, crop_mask = np.rot90(crop_image, k % 4), np.rot90(crop_mask, k % 4)
                if k >= 4:
                    crop_image, crop_mask = crop_image[:, ::-1], crop_mask[:, ::-1]
            images[i], masks[i] = crop_image, crop_mask
        return images, masks

    def batch(self, n: int, device: torch.device | str = "cpu") -> tuple[torch.Tensor, torch.Tensor]:
        """``n`` aligned crops: images float ``[n, 3, R, R]`` in [-1, 1] and masks long ``[n, R, R]`` on ``device``."""
        images, masks = self.batch_uint8(n)
        x = torch.from_numpy(images).to(device).permute(0, 3, 1, 2).float().div(127.5).sub(1.0)
        return x, torch.from_numpy(masks).to(device).long()
