"""Routes retrained per label budget: they see each budget's N labels and no other, and make pairs of the right kind."""

from __future__ import annotations

import dataclasses

import numpy as np
import pandas as pd
import pytest
import torch
import zarr
from curve_helpers import TINY, squares

from ops.diffusion.autoencoder import AutoencoderConfig, build_autoencoder
from ops.diffusion.denoiser import LdmConfig, LdmTrainConfig
from ops.evaluation.budget_routes import (
    QUICK_RETRAINING,
    GanBudgetRoute,
    LdmBudgetRoute,
    RouteFiles,
    annotation_set,
    build_budget_routes,
    dihedral,
    encode_uint8,
    pretrain_unconditional,
)
from ops.evaluation.learning_curve import learning_curve
from ops.evaluation.real_split import budget_indices
from ops.export.gan_route import ExportParams
from ops.gan.appearance_match import colour_histograms
from ops.gan.networks import GanConfig
from ops.gan.sampling import generate
from ops.gan.trainer import GanTrainer, load_generator
from ops.gan.trainer import TrainConfig as GanTrainConfig
from ops.labelling.class_maps import IGNORE_INDEX
from ops.labelling.feature_sampler import FeatureSampler
from ops.labelling.feature_store import write_features


def test_dihedral_copies_keep_each_mask_on_its_image() -> None:
    images, masks = squares(3, 1)
    images[..., 0] = masks * 200  # the red channel draws the mask
    x, y = dihedral(images, masks)
    assert x.shape == (24, 16, 16, 3) and y.shape == (24, 16, 16)
    assert np.array_equal(x[..., 0], y * 200)  # every copy moved image and mask together
    assert np.array_equal(x[:3], images) and np.array_equal(y[:3], masks)
    assert len({m.tobytes() for m in y}) > 3  # the copies are new masks, not repeats


def _bright(images: np.ndarray) -> np.ndarray:
    """A labeller for the square crops: the bright square is class 1."""
    return (images.mean(axis=-1) > 125).astype(np.uint8)


class RecordingRoute:
    """A budget route that records what it was given and returns the crops' dihedral copies (no new label)."""

    def __init__(self) -> None:
        self.calls: list[tuple[bytes, int, int]] = []

    def pairs(self, images, masks, n_pairs, seed):
        self.calls.append((images.tobytes(), len(images), seed))
        x, y = dihedral(images, masks)
        take = np.resize(np.arange(len(x)), n_pairs)
        return x[take], y[take], len(images)


def test_the_curve_retrains_a_budget_route_on_each_budgets_crops_only(real) -> None:
    route = RecordingRoute()
    exported = squares(8, 5)
    result = learning_curve(real, {"ldm": route, "gan": exported}, ["bg", "square"], TINY, labeller=_bright)
    train_x, _, train_ids = real.part("train")
    expected = [(train_x[budget_indices(train_ids, b, s)].tobytes(), b, s) for b in (2, 4) for s in (0, 1)]
    assert route.calls == expected  # once per budget and seed, with exactly that budget's real crops
    runs = result.runs
    ldm_runs = runs[runs["route"] == "ldm"]
    assert (ldm_runs["route_labels"] == ldm_runs["budget"]).all()
    assert runs.loc[runs["route"] == "gan", "route_labels"].isna().all()  # exported pairs: labels beyond the budget
    assert (ldm_runs["route_fidelity"] > 0.95).all()  # the copies' masks still say what their images show
    assert runs.loc[runs["route"] == "gan", "route_fidelity"].isna().all()  # the export scored those already
    summary = result.summary.set_index(["budget", "arm"])
    assert summary.loc[(2, "syn_only:ldm"), "route_labels"] == 2


# ---- the LDM route -------------------------------------------------------------------------------------------

AE = AutoencoderConfig(kind="kl", resolution=32, block_out_channels=(8, 16, 16), norm_num_groups=4)
LDM = LdmConfig(
    n_classes=2,
    resolution=32,
    latent_size=8,
    block_out_channels=(16, 32),
    attention_levels=(False, True),
    norm_num_groups=8,
    mask_token_size=4,
    mask_embed_dim=16,
)


@pytest.fixture(scope="module")
def ldm_route() -> LdmBudgetRoute:
    torch.manual_seed(0)
    ae = build_autoencoder(AE).eval().requires_grad_(False)
    unlabelled = squares(6, 3, size=32)[0]
    latents = encode_uint8(ae, 1.0, unlabelled)
    train_cfg = LdmTrainConfig(batch_size=4, warmup_steps=0)
    base = pretrain_unconditional(LDM, train_cfg, latents, steps=2)
    return LdmBudgetRoute(ae, 1.0, LDM, train_cfg, base, latents, steps=2, unlabelled_share=0.5, sampling_steps=2)


def test_ldm_route_pairs_carry_only_the_budgets_masks_and_repeat_per_seed(ldm_route) -> None:
    images, masks = squares(2, 7, size=32)
    x, y, used = ldm_route.pairs(images, masks, 5, seed=3)
    assert x.shape == (5, 32, 32, 3) and x.dtype == np.uint8 and y.shape == (5, 32, 32) and used == 2
    allowed = {m.tobytes() for m in dihedral(images, masks)[1]}
    assert all(m.tobytes() in allowed for m in y)  # no label beyond the budget's N masks (and their rotations)
    x2, y2, _ = ldm_route.pairs(images, masks, 5, seed=3)
    assert np.array_equal(x, x2) and np.array_equal(y, y2)


def test_unconditional_pretraining_moves_the_weights_and_refuses_nothing_to_learn() -> None:
    latents = torch.randn(4, LDM.latent_channels, 8, 8)
    cfg = LdmTrainConfig(batch_size=2, warmup_steps=0, ema_decay=0.0)
    torch.manual_seed(1)
    before = {k: v.clone() for k, v in pretrain_unconditional(LDM, cfg, latents, steps=1).items()}
    torch.manual_seed(1)
    after = pretrain_unconditional(LDM, cfg, latents, steps=3)
    assert any(not torch.equal(before[k], after[k]) for k in before)
    frozen = LdmTrainConfig(batch_size=2, warmup_steps=0, ema_decay=0.0, lr=1e-12)
    continued = pretrain_unconditional(LDM, frozen, latents, steps=1, init=before)  # starts from the given weights
    assert all(torch.allclose(continued[k], before[k], atol=1e-6) for k in before)
    fresh = pretrain_unconditional(LDM, frozen, latents, steps=1)
    assert any(not torch.allclose(fresh[k], before[k], atol=1e-6) for k in before)
    with pytest.raises(ValueError, match="steps >= 1"):
        pretrain_unconditional(LDM, cfg, latents, steps=0)


# ---- the GAN route -------------------------------------------------------------------------------------------

CLASSES = ["bg", "nucleus", "stroma"]
GAN = GanConfig(resolution=16, z_dim=16, w_dim=16, mapping_layers=1, channel_base=128, channel_max=16)


@pytest.fixture(scope="module")
def gan_files(tmp_path_factory) -> RouteFiles:
    """What a factory leaves for the GAN route: a tiny generator's checkpoint, the features of 4 of its images in a
    store, and an annotation set of stand-in labels for them."""
    root = tmp_path_factory.mktemp("gan_route")
    trainer = GanTrainer(GAN, GanTrainConfig(batch_size=2))
    G = trainer.G_ema.eval()
    blocks = []
    with torch.no_grad():
        for seed in range(4):
            z = torch.randn(GAN.z_dim, generator=torch.Generator().manual_seed(seed))[None]
            _, feats = G.synthesis(G.mapping(z), noise_mode="const", return_features=True)
            blocks.append([f[0].numpy() for f in feats[-2:]])
    store = write_features(root / "store.zarr", blocks, (16, 16))
    labels = zarr.open_group(str(root / "annotations" / "labels.zarr"), mode="w")
    labels.create_array("labels", data=np.random.default_rng(0).integers(0, 3, (4, 16, 16)).astype(np.uint8))
    labels.attrs["classes"] = CLASSES
    pd.DataFrame({"row": np.arange(4)}).to_parquet(root / "annotations" / "index.parquet")
    return RouteFiles(
        gan_checkpoint=str(trainer.save_checkpoint(root / "checkpoint.pt")),
        features=str(store),
        feature_blocks=2,
        annotations=str(root / "annotations"),
    )


@pytest.fixture(scope="module")
def gan_route(gan_files) -> GanBudgetRoute:
    _, labels, _ = annotation_set(gan_files.annotations)
    return GanBudgetRoute(
        load_generator(gan_files.gan_checkpoint), FeatureSampler(gan_files.features), labels, np.arange(4), 3,
        ExportParams(blocks=2, drop_uncertain=0.2, match_pool=0, ignore_uncertain=0.0), members=2, hidden=(8,),
        batch_size=64, batches_per_epoch=2, epochs=1,
    )  # fmt: skip


def test_the_gan_route_synthesises_at_the_retraining_psi_from_the_factorys_files(gan_files) -> None:
    for psi in (0.5, 1.0):
        retraining = dataclasses.replace(QUICK_RETRAINING, gan_psi=psi, gan_match_pool=0)
        route = build_budget_routes(["stylegan2"], CLASSES, gan_files, retraining)["stylegan2"]
        assert route.export.psi == psi and route.export.blocks == 2 and route.n_classes == 3
        assert route.match_reference is None  # no matching: the first seeds, no tiles needed
    with pytest.raises(ValueError, match="annotate both with one class map"):
        build_budget_routes(["stylegan2"], ["bg", "other", "third"], gan_files, retraining)


def test_gan_route_labels_new_images_from_at_most_the_budgets_annotations(gan_route) -> None:
    crops = squares(2, 0)
    x, y, used = gan_route.pairs(*crops, 5, seed=0)
    assert x.shape == (5, 16, 16, 3) and y.shape == (5, 16, 16) and y.max() < 3 and used == 2
    _, _, used_all = gan_route.pairs(*squares(9, 0), 3, seed=0)
    assert used_all == 4  # fewer annotated images than the budget: all of them, never more


def test_a_gan_route_can_leave_its_masks_most_uncertain_pixels_unlabelled(gan_files) -> None:
    assert QUICK_RETRAINING.gan_ignore_uncertain == ExportParams.ignore_uncertain == 0.25  # the export's, by default
    retraining = dataclasses.replace(QUICK_RETRAINING, gan_match_pool=0, gan_ignore_uncertain=0.25)
    route = build_budget_routes(["stylegan2"], CLASSES, gan_files, retraining)["stylegan2"]
    assert route.export.ignore_uncertain == 0.25
    route = dataclasses.replace(route, members=2, hidden=(8,), batch_size=64, batches_per_epoch=2, epochs=1)
    _, y, _ = route.pairs(*squares(2, 0), 3, seed=0)
    assert ((y == IGNORE_INDEX).reshape(3, -1).sum(axis=1) == 64).all()  # a quarter of each 16 x 16 mask
    assert y[y != IGNORE_INDEX].max() < 3


def test_gan_route_needs_one_annotation_per_row(gan_route) -> None:
    with pytest.raises(ValueError, match="one annotation per store row"):
        GanBudgetRoute(gan_route.generator, gan_route.features, gan_route.labels[:2], np.arange(4), 3)


def test_a_route_without_its_files_cannot_retrain_and_says_what_to_materialize() -> None:
    with pytest.raises(ValueError, match="route 'ldm' cannot retrain per budget: autoencoder, ldm_model"):
        build_budget_routes(["ldm"], ["bg", "square"], RouteFiles(training_tiles="tiles.parquet"), QUICK_RETRAINING)
    with pytest.raises(ValueError, match="route 'genseg' cannot retrain per budget: training_tiles"):
        build_budget_routes(["genseg"], ["bg", "square"], RouteFiles(), QUICK_RETRAINING)
    assert build_budget_routes(["cgan_federated"], ["bg", "square"], RouteFiles(), QUICK_RETRAINING) == {}


def test_a_matching_gan_route_keeps_the_pool_images_whose_colours_the_crops_have(gan_route) -> None:
    pool_seeds = gan_route.seeds(12, seed=0)  # unmatched: the first 12 of budget seed 0's range
    hist = colour_histograms(generate(gan_route.generator, pool_seeds, gan_route.export.psi, batch=32)[2])
    wanted = [1, 6, 11]
    export = dataclasses.replace(gan_route.export, match_pool=4)
    matching = dataclasses.replace(gan_route, export=export, match_reference=hist[wanted])
    seeds = matching.seeds(3, seed=0)
    assert np.all(np.diff(seeds) > 0) and set(seeds) <= set(pool_seeds)
    kept = colour_histograms(generate(gan_route.generator, seeds, gan_route.export.psi, batch=32)[2])
    assert np.allclose(np.sort(kept, axis=0), np.sort(hist[wanted], axis=0))  # each crop's colours, ties aside
    pool_of_one = dataclasses.replace(export, match_pool=1)
    assert np.array_equal(dataclasses.replace(matching, export=pool_of_one).seeds(3, 0), pool_seeds[:3])
    x, y, used = matching.pairs(*squares(2, 0), 3, seed=0)
    assert x.shape == (3, 16, 16, 3) and y.shape == (3, 16, 16) and used == 2
    with pytest.raises(ValueError, match="no match_reference"):
        dataclasses.replace(gan_route, export=export)
    with pytest.raises(ValueError, match="exceed the 100000 each seed owns"):
        matching.seeds(25_001, seed=0)  # 4 x 25 001 candidates would reach into seed 1's range


def test_a_matching_gan_route_needs_the_training_tiles_it_matches(gan_files) -> None:
    retraining = QUICK_RETRAINING  # matching by default, as the export
    assert retraining.gan_match_pool == ExportParams.match_pool == 4
    with pytest.raises(ValueError, match="route 'stylegan2' cannot retrain per budget: training_tiles"):
        build_budget_routes(["stylegan2"], CLASSES, gan_files, retraining)
