"""Synthetic pairs: shapes, seeds, uncertainty filtering, batch files, and the dask path matching the local one."""

from __future__ import annotations

import dataclasses

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from ops.export.gan_route import (
    ExportParams,
    leave_uncertain_unlabelled,
    pixel_features,
    synthesize_batch,
    synthesize_on_dask,
    uncertain_to_drop,
    write_batch,
)
from ops.gan.appearance_match import colour_histograms
from ops.gan.networks import GanConfig
from ops.gan.sampling import generate
from ops.gan.trainer import GanTrainer, TrainConfig
from ops.labelling.class_maps import IGNORE_INDEX
from ops.labelling.pixel_classifier import EnsembleConfig, MLPConfig, PixelEnsemble, js_divergence

CFG = GanConfig(resolution=16, z_dim=16, w_dim=16, mapping_layers=1, channel_base=128, channel_max=16)
PARAMS = ExportParams(batch_size=6, seed_base=500, blocks=2, match_pool=0, ignore_uncertain=0.0)  # each its own test


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """A tiny generator checkpoint and a 3-member ensemble sized for its last 2 blocks."""
    out = tmp_path_factory.mktemp("models")
    trainer = GanTrainer(CFG, TrainConfig(batch_size=2))
    checkpoint = trainer.save_checkpoint(out / "gan.pt")
    n_features = sum(trainer.G_ema.block_channels[-PARAMS.blocks :])
    ensemble = PixelEnsemble(EnsembleConfig(MLPConfig(n_features, 3), 3), seed=1).eval()
    ensemble.save(out / "ensemble.pt")
    return checkpoint, out / "ensemble.pt", trainer.G_ema.eval(), ensemble


def test_batch_seeds_shapes_and_uncertainty(models):
    _, _, G, ensemble = models
    batch = synthesize_batch(G, ensemble, 2, PARAMS)
    assert list(batch.seeds) == list(range(512, 518))  # seed_base + batch * batch_size + i
    assert batch.images.shape == (6, 16, 16, 3) and batch.masks.shape == (6, 16, 16)
    assert batch.masks.max() < 3 and (batch.uncertainty >= 0).all()
    again = synthesize_batch(G, ensemble, 2, PARAMS)
    np.testing.assert_array_equal(again.images, batch.images)  # regenerable from seeds alone


def test_uncertain_to_drop_takes_the_top_fraction():
    scores = np.array([0.1, 0.9, 0.3, 0.8, 0.2, 0.0, 0.5, 0.4, 0.6, 0.7])
    assert list(np.flatnonzero(uncertain_to_drop(scores, 0.2))) == [1, 3]
    assert uncertain_to_drop(scores, 0.0).sum() == 0
    assert uncertain_to_drop(scores[:3], 0.1).sum() == 1  # at least one when the fraction is > 0


def test_leave_uncertain_unlabelled_blanks_the_most_uncertain_share_of_pixels():
    mask = np.arange(8, dtype=np.uint8).reshape(2, 4) % 3
    uncertainty = np.array([[0.1, 0.9, 0.3, 0.8], [0.2, 0.0, 0.8, 0.4]])
    out = leave_uncertain_unlabelled(mask, uncertainty, 0.25)  # 2 of 8 pixels: 0.9, then the first 0.8
    expected = mask.copy()
    expected[0, 1] = expected[0, 3] = IGNORE_INDEX
    np.testing.assert_array_equal(out, expected)
    assert mask[0, 1] == 1  # a copy: the input is untouched
    np.testing.assert_array_equal(leave_uncertain_unlabelled(mask, uncertainty, 0.0), mask)


def test_a_batch_can_leave_each_masks_most_uncertain_pixels_unlabelled(models):
    _, _, G, ensemble = models
    full = synthesize_batch(G, ensemble, 1, PARAMS)
    blanked = synthesize_batch(G, ensemble, 1, dataclasses.replace(PARAMS, ignore_uncertain=0.25))
    np.testing.assert_array_equal(blanked.images, full.images)
    np.testing.assert_array_equal(blanked.uncertainty, full.uncertainty)  # the image scores are unchanged
    ignored = blanked.masks == IGNORE_INDEX
    assert (ignored.reshape(6, -1).sum(axis=1) == 64).all()  # a quarter of every 16 x 16 mask
    np.testing.assert_array_equal(blanked.masks[~ignored], full.masks[~ignored])
    # The blanked pixels are those the members disagree on most: none left labelled is more uncertain.
    seed = int(full.seeds[0])
    z = torch.randn(CFG.z_dim, generator=torch.Generator().manual_seed(seed))[None]
    _, feats = G.synthesis(G.mapping(z, psi=PARAMS.psi), noise_mode="const", return_features=True)
    js = js_divergence(ensemble.predict_proba(pixel_features(feats[-PARAMS.blocks :], 16))).reshape(16, 16)
    assert js[ignored[0]].min() >= js[~ignored[0]].max()
    with pytest.raises(ValueError, match="share of pixels in"):
        ExportParams(ignore_uncertain=1.0)


def test_write_batch_files(models, tmp_path):
    _, _, G, ensemble = models
    batch = synthesize_batch(G, ensemble, 0, PARAMS)
    keep = np.array([True, False, True, True, False, True])
    rows = pd.DataFrame({"sample_id": [f"s{i}" for i in range(6)], "seed": batch.seeds})
    manifest = write_batch(
        tmp_path / "b",
        batch.images,
        batch.masks,
        keep,
        rows,
        palette=[0, 0, 0, 255, 0, 0, 0, 255, 0],
        arrays={"latents.npz": batch.latent_arrays()},
    )
    assert list(manifest["sample_id"]) == ["s0", "s2", "s3", "s5"]
    assert sorted(p.name for p in (tmp_path / "b" / "images").iterdir()) == ["s0.png", "s2.png", "s3.png", "s5.png"]
    mask = Image.open(next((tmp_path / "b" / "masks").iterdir()))
    assert mask.mode == "P" and not mask.info, "no metadata chunks ride along in exported PNGs"
    assert len(pd.read_parquet(tmp_path / "b" / "dropped.parquet")) == 2
    assert np.load(tmp_path / "b" / "latents.npz")["w"].shape[0] == 6


def test_dask_local_cluster_matches_single_process(models):
    from distributed import LocalCluster

    checkpoint, ensemble_path, G, ensemble = models
    local = synthesize_batch(G, ensemble, 1, PARAMS)
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None) as cluster:
        remote = synthesize_on_dask(
            checkpoint, ensemble_path, PARAMS.seeds(1), PARAMS, address=cluster.scheduler_address
        )
    np.testing.assert_array_equal(remote.seeds, local.seeds)
    np.testing.assert_array_equal(remote.images, local.images)
    np.testing.assert_array_equal(remote.masks, local.masks)
    torch.testing.assert_close(torch.from_numpy(remote.uncertainty), torch.from_numpy(local.uncertainty))


def test_a_colour_matched_batch_keeps_the_candidates_nearest_the_reference(models):
    _, _, G, ensemble = models
    matched = dataclasses.replace(PARAMS, match_pool=3)
    candidates = matched.candidate_seeds(1)
    assert list(candidates) == list(range(518, 536))  # seed_base + batch * 3 * batch_size + i
    assert not set(candidates) & set(matched.candidate_seeds(0)) | set(candidates) & set(matched.candidate_seeds(2))
    hist = colour_histograms(generate(G, candidates, matched.psi, batch=32)[2])
    wanted = [0, 4, 7, 9, 13, 17]
    batch = synthesize_batch(G, ensemble, 1, matched, reference=hist[wanted])
    assert len(batch.seeds) == 6 and set(batch.seeds) <= set(candidates) and np.all(np.diff(batch.seeds) > 0)
    kept = colour_histograms(batch.images)
    assert np.allclose(np.sort(kept, axis=0), np.sort(hist[wanted], axis=0))  # the reference's colours, ties aside
    with pytest.raises(ValueError, match="no reference histograms"):
        synthesize_batch(G, ensemble, 1, matched)
    assert list(PARAMS.candidate_seeds(2)) == list(PARAMS.seeds(2))  # no matching: the batch's own seeds
