"""The cgan_federated export route: tiles of a class per seed, manifest rows with class and lineage and no mask,
the memorization bank at the federated GAN's resolution, and the loaders' handling of rows without a mask."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from ops.export.cgan_route import (
    CGAN_ROUTE,
    LATENTS_FILE,
    cgan_lineage,
    manifest_rows,
    memorization,
    require_resolution,
    synthesize_class_tiles,
    tile_class_counts,
    training_bank,
)
from ops.export.dataset import SyntheticSegmentationDataset, SyntheticTileClassDataset, mask_routes
from ops.export.gan_route import assemble_manifest, write_batch
from ops.federated.networks import CondGanConfig, CondGenerator
from ops.slides.tile_store import create_tile_array

CFG = CondGanConfig(resolution=16, n_classes=3, g_channels=16)


@pytest.fixture(scope="module")
def G() -> CondGenerator:
    torch.manual_seed(0)
    return CondGenerator(CFG).eval()


@pytest.fixture()
def lineage(tmp_path: Path) -> dict:
    """What ``federated_gan`` leaves: the ServerApp's lineage file (site names, slide ids, counts)."""
    rounds = {
        "run_id": 7,
        "flower_run_id": 123,
        "rounds": [
            {"round": 1, "sites": [{"site": "h1", "slides": "sl-1"}, {"site": "h2", "slides": "sl-2;sl-3"}]},
            {"round": 2, "sites": [{"site": "h1", "slides": "sl-1"}]},
        ],
    }
    (tmp_path / "lineage.json").write_text(json.dumps(rounds))
    found = cgan_lineage("/d/global.pt", str(tmp_path / "lineage.json"), "mlrun", "4")
    return {**found, "source_slides": found["cgan_source_slides"]}


def test_tiles_have_the_class_of_their_seed_and_regenerate_alone(G):
    seeds = np.arange(100, 107)
    batch = synthesize_class_tiles(G, seeds)
    assert batch.images.shape == (7, 16, 16, 3) and batch.images.dtype == np.uint8
    assert batch.tile_class.tolist() == [s % 3 for s in seeds.tolist()]
    alone = synthesize_class_tiles(G, seeds[4:5])  # one seed in another batch: the same tile
    np.testing.assert_array_equal(alone.images[0], batch.images[4])
    assert set(batch.latent_arrays()) == {"seeds", "tile_class", "z"}


def test_lineage_reads_sites_and_slides_from_the_federation(lineage):
    assert lineage["cgan_sites"] == ["h1", "h2"] and lineage["cgan_source_slides"] == ["sl-1", "sl-2", "sl-3"]
    assert (lineage["cgan_rounds"], lineage["cgan_flower_run"], lineage["cgan_model_version"]) == (2, "123", "4")
    other = {"resolution": 64}
    with pytest.raises(ValueError, match=r"make 64-px pairs but federated_gan 32-px tiles; export cgan_federated"):
        require_resolution(other, 32)


def test_rows_carry_class_and_lineage_write_no_mask_and_load_for_classification(G, lineage, tmp_path):
    batch = synthesize_class_tiles(G, np.arange(6))
    rows = manifest_rows(batch, 0, lineage, 0.5)
    assert rows["generator"].eq(CGAN_ROUTE).all() and rows["mask"].isna().all()
    assert rows["tile_class"].tolist() == [0, 1, 2, 0, 1, 2]
    assert rows["cgan_mlflow_run"].eq("mlrun").all() and rows["source_slides"].eq("sl-1;sl-2;sl-3").all()
    assert rows["cgan_flower_run"].eq("123").all() and rows["torch_version"].eq(torch.__version__).all()
    assert rows["latents"].iloc[5] == f"batches/000/{LATENTS_FILE}#5"

    keep = np.array([True, True, True, True, False, True])
    out = tmp_path / "export"
    write_batch(
        out / "batches" / "000", batch.images, [None] * 6, keep, rows, [], {LATENTS_FILE: batch.latent_arrays()}
    )
    assert not list((out / "batches" / "000" / "masks").iterdir()), "no mask file for a tile without a mask"
    manifest = assemble_manifest(out)
    assert tile_class_counts(manifest) == {"0": 2, "1": 1, "2": 2}
    assert mask_routes(out) == []

    tiles = SyntheticTileClassDataset(out)
    assert len(tiles) == 5
    image, label = tiles[4]
    assert image.shape == (3, 16, 16) and image.min() >= 0 and image.max() <= 1
    assert label.dtype == torch.int64 and label.item() == 2  # row 4 was dropped: the fifth kept is seed 5
    np.testing.assert_allclose(image.permute(1, 2, 0).numpy() * 255, batch.images[5], atol=0.5)
    assert len(SyntheticSegmentationDataset(out)) == 0, "rows without a mask are not segmentation pairs"
    with pytest.raises(ValueError, match="rows have no masks .* load them with SyntheticTileClassDataset"):
        SyntheticSegmentationDataset(out, generator=CGAN_ROUTE)


def test_segmentation_exports_are_refused_by_the_class_loader(tmp_path):
    out = tmp_path / "export"
    out.mkdir()
    pd.DataFrame({"sample_id": ["a"], "image": ["a.png"], "mask": ["m.png"], "generator": ["ldm"]}).to_parquet(
        out / "manifest.parquet"
    )
    with pytest.raises(ValueError, match="no rows with a tile_class; export the cgan_federated route"):
        SyntheticTileClassDataset(out)
    assert mask_routes(out) == ["ldm"]


def test_memorization_bank_is_whole_tiles_at_the_generator_resolution(tmp_path):
    """A generated tile equal to a training tile (area-averaged as the sites do) is flagged; others are not."""
    rng = np.random.default_rng(0)
    coarse = rng.integers(30, 230, (40, 4, 4, 3))
    tiles = np.repeat(np.repeat(coarse, 16, axis=1), 16, axis=2).astype(np.uint8)  # 64-px tiles
    arr = create_tile_array(tmp_path / "tiles.zarr", len(tiles), 64)
    for i, t in enumerate(tiles):
        arr[i] = t
    table = pd.DataFrame({"store": str(tmp_path / "tiles.zarr"), "tile_index": range(len(tiles))})
    bank = training_bank(table, 16, limit=100)
    assert bank.shape == (40, 16, 16, 3)
    copy = tiles[3].reshape(16, 4, 16, 4, 3).mean(axis=(1, 3)).round().astype(np.uint8)
    new = np.repeat(np.repeat(rng.integers(30, 230, (2, 4, 4, 3)), 4, axis=1), 4, axis=2).astype(np.uint8)
    verdict = memorization(np.concatenate([copy[None], new]), table, limit=100, quantile=0.01)
    assert verdict["near_copy"].tolist() == [True, False, False]
    with pytest.raises(ValueError, match="needs training tiles"):
        training_bank(table.iloc[:0], 16, limit=10)
