"""Leak-free real pairs: no tile feeds two of train / validation / test; budgets spread over tiles."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from ops.evaluation.real_split import (
    RealPairs,
    assert_disjoint,
    assign_parts,
    budget_indices,
    cut_pairs,
    grid_positions,
)
from ops.labelling.slide_annotations import write_mask_store
from ops.slides.tile_store import TileWriter, create_tile_array


@pytest.fixture()
def tiles(tmp_path) -> pd.DataFrame:
    """Three slides of four 64-px tiles; tile value encodes (slide, tile) so every crop names its tile."""
    rows = []
    for s, slide in enumerate(("a", "b", "c")):
        store = tmp_path / f"{slide}.zarr"
        create_tile_array(store, 4, 64)
        writer = TileWriter(store)
        for i in range(4):
            writer.write(i, np.full((64, 64, 3), 10 * s + i, np.uint8))
            rows.append(
                {"slide": slide, "tile_index": i, "store": str(store), "split": "holdout" if s == 2 else "train"}
            )
    write_mask_store(tmp_path / "masks.zarr", np.stack([np.full((64, 64), i % 3, np.uint8) for i in range(12)]))
    return pd.DataFrame(rows).assign(mask_store=str(tmp_path / "masks.zarr"), mask_index=np.arange(12))


def test_no_tile_is_shared_between_parts(tiles) -> None:
    parts = assign_parts(tiles, val_share=0.5, seed=1)
    assert set(parts[tiles["split"] == "train"]) == {"train"}
    assert sorted(parts[tiles["split"] == "holdout"]) == ["test", "test", "val", "val"]
    pairs = cut_pairs(tiles, parts, resolution=16, crops_per_tile=3, seed=0)
    assert len(pairs.images) == 36
    for name in ("train", "val", "test"):
        images, _, ids = pairs.part(name)
        # each crop's pixel value names its source tile: the id recorded must match it
        assert all(
            int(img[0, 0, 0]) == 10 * "abc".index(t[0]) + int(t.split("#")[1])
            for img, t in zip(images, ids, strict=True)
        )
    train, val, test = (set(pairs.part(p)[2].tolist()) for p in ("train", "val", "test"))
    assert not (train & val or train & test or val & test)
    assert {t[0] for t in val | test} == {"c"}  # validation and test only from the held-out slide


def test_a_shared_tile_is_refused_by_name() -> None:
    with pytest.raises(ValueError, match="1 tiles feed more than one.*'a#3': \\['test', 'train'\\]"):
        assert_disjoint(np.array(["a#3", "a#3", "b#1"]), np.array(["train", "test", "test"]))
    with pytest.raises(ValueError, match="tiles feed more than one"):
        RealPairs(
            np.zeros((2, 8, 8, 3), np.uint8),
            np.zeros((2, 8, 8), np.uint8),
            np.array(["t", "t"]),
            np.array(["val", "test"]),
        )


def test_crops_of_one_tile_do_not_overlap() -> None:
    corners = grid_positions(64, 16, 16, np.random.default_rng(0))
    assert len(set(corners)) == 16 and all(y % 16 == 0 and x % 16 == 0 for y, x in corners)
    assert len(grid_positions(64, 16, 40, np.random.default_rng(0))) == 16  # capped at the grid
    with pytest.raises(ValueError, match="tiles are 8 px, smaller than the 16 px crop"):
        grid_positions(8, 16, 1, np.random.default_rng(0))


def test_budget_spreads_over_tiles_and_refuses_too_large_a_budget() -> None:
    ids = np.array([f"t{i // 3}" for i in range(12)])  # 4 tiles x 3 crops
    pick = budget_indices(ids, 4, seed=0)
    assert len(set(ids[pick])) == 4
    assert len(set(ids[budget_indices(ids, 6, seed=0)])) == 4
    assert not np.array_equal(budget_indices(ids, 4, seed=0), budget_indices(ids, 4, seed=1))
    with pytest.raises(ValueError, match="label budget N=13 but only 12 labelled training crops"):
        budget_indices(ids, 13, seed=0)


def _odd(tile: np.ndarray) -> np.ndarray:
    return (tile[..., 0] % 2).astype(np.uint8)


def test_round_trip_and_refusal_of_old_files(tiles, tmp_path) -> None:
    pairs = cut_pairs(tiles, assign_parts(tiles, seed=0), 32, 2, labeller=None)
    loaded = RealPairs.load(pairs.save(tmp_path / "real.npz"))
    assert np.array_equal(loaded.images, pairs.images) and loaded.counts() == pairs.counts()
    labelled = cut_pairs(tiles.drop(columns=["mask_store", "mask_index"]), assign_parts(tiles), 32, 2, labeller=_odd)
    assert (labelled.masks == (labelled.images[..., 0] % 2)).all(), "the labeller labels each tile"
    with pytest.raises(ValueError, match="no mask_store column and no labeller"):
        cut_pairs(tiles.drop(columns=["mask_store", "mask_index"]), assign_parts(tiles), 32, 2)
    np.savez(tmp_path / "old.npz", images=pairs.images, masks=pairs.masks)
    with pytest.raises(ValueError, match="lack \\['tile_ids', 'parts'\\].*rematerialize real_annotations"):
        RealPairs.load(tmp_path / "old.npz")
    with pytest.raises(ValueError, match="at least two held-out tiles"):
        assign_parts(tiles.assign(split="train"))
