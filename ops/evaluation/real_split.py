"""Real image-mask pairs split so that no tile feeds two of train / validation / test.

The earlier comparison drew train and test crops with replacement from the same held-out tiles, so overlapping crops
of one tile sat on both sides — a leak that flatters a model trained on real pairs. Here:

* **train** crops come only from tiles of training slides (the tiles an expert annotated: the label budget),
* **validation** and **test** crops come only from tiles of held-out slides, and the held-out *tiles* are split
  between them (a tile is validation or test, never both),
* each tile is cut into non-overlapping grid crops, so two crops of one tile never share a pixel,
* :func:`assert_disjoint` checks the result by tile id and is called whenever pairs are built or loaded.

A label budget of N crops (:func:`budget_indices`) spreads over as many distinct tiles as possible: N crops of one
tile carry less information than N crops of N tiles, and an expert asked for N crops would not draw them from one.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from ops.labelling.slide_annotations import open_mask_array
from ops.slides.tile_store import open_tile_array

PARTS = ("train", "val", "test")


def tile_id(slide: str, tile_index: int) -> str:
    """A tile's identity across tables: its slide key and its index in the slide's tile store."""
    return f"{slide}#{int(tile_index)}"


@dataclass(frozen=True)
class RealPairs:
    """Crops of real tiles with their masks, each labelled with its tile and its part (train, val or test)."""

    images: np.ndarray  # uint8 [N, R, R, 3]
    masks: np.ndarray  # uint8 [N, R, R] class ids (IGNORE_INDEX = unannotated)
    tile_ids: np.ndarray  # str [N] "<slide>#<tile_index>"
    parts: np.ndarray  # str [N] one of PARTS

    def __post_init__(self) -> None:
        n = len(self.images)
        if self.masks.shape != self.images.shape[:3] or len(self.tile_ids) != n or len(self.parts) != n:
            raise ValueError(
                f"RealPairs: expected images [N, R, R, 3], masks [N, R, R], N tile ids and N parts; received "
                f"{self.images.shape}, {self.masks.shape}, {len(self.tile_ids)}, {len(self.parts)}"
            )
        unknown = sorted(set(self.parts.tolist()) - set(PARTS))
        if unknown:
            raise ValueError(f"RealPairs: unknown parts {unknown}; expected {PARTS}")
        assert_disjoint(self.tile_ids, self.parts)

    def part(self, name: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``(images, masks, tile_ids)`` of one part."""
        sel = self.parts == name
        return self.images[sel], self.masks[sel], self.tile_ids[sel]

    def counts(self) -> dict[str, int]:
        """Crops and distinct tiles per part (for metadata)."""
        out = {}
        for name in PARTS:
            sel = self.parts == name
            out[f"{name}_crops"] = int(sel.sum())
            out[f"{name}_tiles"] = len(set(self.tile_ids[sel].tolist()))
        return out

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write one compressed npz atomically (temp file, then rename)."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp.npz")
        np.savez_compressed(
            tmp, images=self.images, masks=self.masks, tile_ids=self.tile_ids.astype(str), parts=self.parts.astype(str)
        )
        tmp.replace(path)
        return path

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> RealPairs:
        """Read a file written by :meth:`save`; an older file without tile ids is refused (it may leak)."""
        with np.load(Path(path)) as data:
            missing = [k for k in ("images", "masks", "tile_ids", "parts") if k not in data.files]
            if missing:
                raise ValueError(
                    f"{path}: real pairs lack {missing} (written before leak-free splits); rematerialize "
                    f"real_annotations"
                )
            return cls(data["images"], data["masks"], data["tile_ids"], data["parts"])


def assert_disjoint(tile_ids: np.ndarray, parts: np.ndarray) -> None:
    """Raise when a tile contributes crops to more than one part.

    Raises:
        ValueError: naming up to five shared tiles and the parts they appear in.
    """
    table = pd.DataFrame({"tile": np.asarray(tile_ids).astype(str), "part": np.asarray(parts).astype(str)})
    per_tile = table.groupby("tile")["part"].nunique()
    shared = per_tile[per_tile > 1].index.tolist()
    if shared:
        where = {t: sorted(table.loc[table["tile"] == t, "part"].unique()) for t in shared[:5]}
        raise ValueError(
            f"{len(shared)} tiles feed more than one of train/val/test (e.g. {where}); a tile's crops must stay "
            f"in one part. Fix: split by tile with assign_parts"
        )


def assign_parts(tiles: pd.DataFrame, val_share: float = 0.3, seed: int = 0) -> pd.Series:
    """Part per tile row: ``train`` for training-slide tiles, held-out tiles split by tile into ``val`` / ``test``.

    Args:
        tiles: Rows with ``slide``, ``tile_index`` and ``split`` (``train`` / ``holdout`` from ``split_tiles``).
        val_share: Share of the held-out tiles (at least one) that go to validation.
        seed: Seeds which held-out tiles validate.

    Raises:
        ValueError: fewer than two held-out tiles, no training tile, or ``val_share`` outside (0, 1).
    """
    if not 0 < val_share < 1:
        raise ValueError(f"val_share: expected a share in (0, 1), received {val_share!r}")
    parts = pd.Series(np.where(tiles["split"].to_numpy() == "train", "train", "test"), index=tiles.index)
    held = np.flatnonzero(parts.to_numpy() == "test")
    if len(held) < 2 or len(held) == len(tiles):
        raise ValueError(
            f"real pairs need training-slide tiles and at least two held-out tiles (validation and test); found "
            f"{len(tiles) - len(held)} training and {len(held)} held-out tiles. Fix: tile more slides or annotate "
            f"tiles of both the training and the held-out slides"
        )
    n_val = min(len(held) - 1, max(1, round(val_share * len(held))))
    chosen = np.random.default_rng(seed).choice(held, n_val, replace=False)
    parts.iloc[chosen] = "val"
    return parts


def grid_positions(size: int, resolution: int, count: int, rng: np.random.Generator) -> list[tuple[int, int]]:
    """Up to ``count`` top-left corners of non-overlapping ``resolution`` crops of a ``size`` tile, drawn without
    replacement from the crop grid (so two crops of one tile never share a pixel)."""
    if size < resolution:
        raise ValueError(f"tiles are {size} px, smaller than the {resolution} px crop requested")
    per_side = size // resolution
    cells = rng.choice(per_side * per_side, min(count, per_side * per_side), replace=False)
    return [(int(c // per_side) * resolution, int(c % per_side) * resolution) for c in cells]


def cut_pairs(
    tiles: pd.DataFrame,  # rows with slide, tile_index, store and (with masks) mask_store, mask_index
    parts: pd.Series,  # part per row (assign_parts)
    resolution: int,  # crop edge in tile pixels
    crops_per_tile: int,  # non-overlapping crops cut from each tile
    seed: int = 0,  # seeds crop positions
    labeller: Callable[[np.ndarray], np.ndarray] | None = None,  # labels a whole tile when rows have no mask store
) -> RealPairs:
    """Cut non-overlapping crops of every tile, with their masks (from the mask store, or ``labeller``).

    Raises:
        ValueError: rows without masks and no labeller, or tiles smaller than the crop.
    """
    has_masks = "mask_store" in tiles.columns
    if not has_masks and labeller is None:
        raise ValueError("cut_pairs: the tile rows have no mask_store column and no labeller was given")
    rng = np.random.default_rng(seed)
    stores: dict[str, object] = {}
    images, masks, ids, out_parts = [], [], [], []
    for (_, row), part in zip(tiles.iterrows(), parts.to_numpy(), strict=True):
        store = str(row["store"])
        if store not in stores:
            stores[store] = open_tile_array(store)
        tile = np.asarray(stores[store][int(row["tile_index"])])
        if has_masks:
            key = f"mask:{row['mask_store']}"
            if key not in stores:
                stores[key] = open_mask_array(row["mask_store"])
            tile_mask = np.asarray(stores[key][int(row["mask_index"])])
        else:  # label the whole tile, as an annotator would, so crop borders get the same context as mask stores
            tile_mask = labeller(tile)
        for y, x in grid_positions(min(tile.shape[:2]), resolution, crops_per_tile, rng):
            images.append(tile[y : y + resolution, x : x + resolution])
            masks.append(tile_mask[y : y + resolution, x : x + resolution])
            ids.append(tile_id(row["slide"], row["tile_index"]))
            out_parts.append(part)
    return RealPairs(
        np.stack(images).astype(np.uint8), np.stack(masks).astype(np.uint8), np.array(ids), np.array(out_parts)
    )


def budget_indices(tile_ids: np.ndarray, budget: int, seed: int) -> np.ndarray:
    """Indices of ``budget`` training crops for one seed, spread over as many distinct tiles as possible.

    Tiles are visited in a seeded random order, one crop per tile per round, so N ≤ tiles gives N distinct tiles.

    Raises:
        ValueError: the budget exceeds the labelled crops, naming both numbers and the fix.
    """
    tile_ids = np.asarray(tile_ids).astype(str)
    if not 1 <= budget <= len(tile_ids):
        raise ValueError(
            f"label budget N={budget} but only {len(tile_ids)} labelled training crops exist; lower the budgets "
            f"(learning curve 'budgets') or annotate more training tiles"
        )
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(tile_ids))
    rank_in_tile = pd.Series(tile_ids[order]).groupby(tile_ids[order]).cumcount().to_numpy()
    tile_rank = {t: r for r, t in enumerate(rng.permutation(sorted(set(tile_ids.tolist()))))}
    key = rank_in_tile * len(tile_rank) + np.array([tile_rank[t] for t in tile_ids[order]])
    return np.sort(order[np.argsort(key, kind="stable")[:budget]])
