"""The paper's downstream check: three arms scored on held-out tiles, and its inputs checked."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from ops.federated.downstream import ARMS, CheckSettings, TileSet, classifier_check, generated_tiles
from ops.federated.networks import CondGanConfig, CondGenerator
from ops.federated.sites import tiles_from_table
from ops.slides.tile_store import create_tile_array


def toy(n: int, seed: int) -> TileSet:
    """Class 0 reddish, class 1 bluish: a task a classifier learns in a few steps."""
    rng = np.random.default_rng(seed)
    labels = np.arange(n, dtype=np.int64) % 2
    base = np.where(labels[:, None] == 0, [200, 60, 80], [70, 80, 200])[:, None, None, :]
    return TileSet(np.clip(base + rng.normal(0, 20, (n, 16, 16, 3)), 0, 255).astype(np.uint8), labels)


@pytest.fixture(scope="module")
def G() -> CondGenerator:
    torch.manual_seed(0)
    return CondGenerator(CondGanConfig(resolution=16, g_channels=16)).eval()


def test_three_arms_are_scored_on_the_held_out_tiles(G):
    settings = CheckSettings(steps=40, batch_size=16, n_generated=8)
    results = classifier_check(G, toy(32, 0), toy(20, 1), 2, settings)
    assert list(results) == list(ARMS)
    for arm, s in results.items():
        values = [s.accuracy, s.f1, *s.recall]
        assert len(s.recall) == 2 and all(0.0 <= v <= 1.0 for v in values), (arm, s)
    assert results["real"].accuracy >= 0.9, "the real arm learns the colour task"
    again = classifier_check(G, toy(32, 0), toy(20, 1), 2, settings, arms=("real",))
    assert again["real"] == results["real"], "same data, steps and seed: the same classifier"


def test_the_small_vit_classifier_is_selectable(G):
    vit = classifier_check(G, toy(16, 0), toy(8, 1), 2, CheckSettings(backbone="vit", steps=3, batch_size=8))
    assert all(0.0 <= s.accuracy <= 1.0 and len(s.recall) == 2 for s in vit.values())


def test_generated_tiles_are_class_balanced(G):
    tiles = generated_tiles(G, 7, seed=3)
    assert tiles.images.shape == (7, 16, 16, 3) and tiles.labels.tolist() == [0, 1, 0, 1, 0, 1, 0]


def test_bad_inputs_are_named(G):
    train, test = toy(8, 0), toy(4, 1)
    with pytest.raises(ValueError, match="arms: expected a non-empty subset"):
        classifier_check(G, train, test, 2, arms=("synthetic",))
    with pytest.raises(ValueError, match=r"arms \['generated'\] need a generator"):
        classifier_check(None, train, test, 2, arms=("generated",))
    with pytest.raises(ValueError, match="hold out at least one slide"):
        classifier_check(G, train, TileSet(test.images[:0], test.labels[:0]), 2)
    big = TileSet(np.zeros((4, 32, 32, 3), np.uint8), np.zeros(4, np.int64))
    with pytest.raises(ValueError, match="real tiles are 32 px but the generator makes 16 px"):
        classifier_check(G, big, test, 2)


def test_tiles_from_table_reads_listed_tiles_with_csv_classes(tmp_path):
    folder = tmp_path / "case_a" / "tiles"
    folder.mkdir(parents=True)
    arr = create_tile_array(folder / "tiles.zarr", 3, 32)
    for i in range(3):
        arr[i] = np.full((32, 32, 3), 60 * i, np.uint8)
    (folder / "labels.csv").write_text("slide,tile_index,label\ncase_a,0,1\ncase_a,1,0\ncase_a,2,1\n")
    table = pd.DataFrame(
        {"store": str(folder / "tiles.zarr"), "tile_index": [2, 0], "slide": "case_a", "slide_id": "sl-a", "mpp": 0.5}
    )
    found = tiles_from_table(table, 16)
    assert found.images.shape == (2, 16, 16, 3) and found.labels.tolist() == [1, 1]
    assert found.images[0].max() == 120 and found.slides == ("sl-a",)
    with pytest.raises(ValueError, match="expected rows with columns"):
        tiles_from_table(table.drop(columns="store"), 16)
