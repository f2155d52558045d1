"""Synthetic routes retrained per label budget: the equal-label-budget rule of the downstream benchmark.

A synthetic route is only a fair competitor of "real only at N crops" when its *labelled* part saw the same N labels
and no other. Pairs exported by a route trained on every annotated tile carry more labels than the small budgets
allow, so their gain is an upper bound. A :class:`BudgetRoute` instead takes the budget's N labelled crops (and the
seed that chose them) and returns fresh synthetic pairs (the ``BudgetRoute`` protocol of
``ops.evaluation.learning_curve``) made by a route whose labelled part learned from those N only:

* :class:`GanBudgetRoute` (DatasetGAN's comparison) — the generator never sees labels; the pixel classifier on its
  features is trained from N annotated *generated* images (chosen by the seed from the annotation set), then labels
  newly generated images. The N real crops themselves only set N: DatasetGAN's annotators label generated images.
* :class:`LdmBudgetRoute` (DISC) — a denoiser pretrained without labels (every step through the null condition,
  :func:`pretrain_unconditional`, optionally continuing a long label-free run: ``ops.diffusion.label_free``) learns the
  mask conditioning from the N crops (their eight dihedral copies), keeps seeing unlabelled tissue through the null
  slot, then samples pairs for the N masks' dihedral copies.
* :class:`GensegBudgetRoute` (GenSeg) — the mask-to-image generator and its architecture are trained from random
  weights on the N crops (multi-level optimisation against the validation crops, unlabelled tissue for appearance),
  then paint augmented versions of the N masks (``ops.genseg.budget``).

Everything here is seeded: the same crops and seed give the same pairs.
"""

from __future__ import annotations

import dataclasses
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
import zarr

from ops.common.device import pick_device
from ops.diffusion.autoencoder import Autoencoder, encode, load_autoencoder
from ops.diffusion.denoiser import LdmConfig, LdmTrainConfig, LdmTrainer, read_ldm_checkpoint
from ops.diffusion.label_free import read_label_free
from ops.diffusion.samplers import NULL_LABEL, sample_latents
from ops.export.gan_route import ExportParams, synthesize_seeds, uncertain_to_drop
from ops.export.ldm_route import latents_to_uint8
from ops.gan.appearance_match import REFERENCE_CROPS, draw_seeds, reference_histograms
from ops.gan.networks import Generator
from ops.gan.trainer import load_generator
from ops.genseg.budget import BudgetConfig, budget_pairs
from ops.labelling.feature_sampler import BatchStream, FeatureSampler, PixelSource
from ops.labelling.pixel_classifier import EnsembleConfig, MLPConfig, PixelEnsemble, TrainConfig
from ops.slides.crops import training_crops

BUDGET_SEED_BASE = 50_000_000  # seeds of budget-route samples, apart from the export's and the previews'
SEEDS_PER_BUDGET_SEED = 100_000  # each curve seed's own range, so two seeds never share a sample


def dihedral(images: np.ndarray, masks: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The eight rotations/flips of each crop and its mask (``[8N, ...]``): label-preserving, no new label."""
    outs_x, outs_y = [], []
    for k in range(8):
        x, y = np.rot90(images, k % 4, axes=(1, 2)), np.rot90(masks, k % 4, axes=(1, 2))
        if k >= 4:
            x, y = x[:, :, ::-1], y[:, :, ::-1]
        outs_x.append(x)
        outs_y.append(y)
    return np.ascontiguousarray(np.concatenate(outs_x)), np.ascontiguousarray(np.concatenate(outs_y))


def _to_unit(images: np.ndarray, device: torch.device | str) -> torch.Tensor:
    """uint8 ``[N, R, R, 3]`` -> float ``[N, 3, R, R]`` in [-1, 1], as the autoencoder expects."""
    return torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).float().div(127.5).sub(1).to(device)


# ----------------------------------------------------------------------------------------------------------------
# GAN route (DatasetGAN).


@dataclass
class GanBudgetRoute:
    """The StyleGAN2 route with its pixel classifier retrained on N annotated generated images.

    Attributes:
        generator: The trained generator (saw no labels).
        features: Feature store of the annotated generated images.
        labels: ``labels[j]`` is the class-id mask of store row ``rows[j]`` (the annotation set).
        rows: Store rows of ``labels``.
        n_classes: K.
        export: How pairs are synthesised and filtered (blocks, psi, decision, uncertainty drop, colour matching) —
            as the export.
        members, hidden, dropout: The ensemble (the ``pixel_classifier`` asset's defaults).
        batch_size, batches_per_epoch, epochs, class_balance: The pixel stream and training length.
        match_reference: Colour histograms (``ops.gan.appearance_match.reference_histograms``) of unlabelled
            training-slide crops, which ``export.match_pool`` times the needed images are matched to (required
            unless ``export.match_pool`` is 0).
    """

    generator: Generator
    features: PixelSource
    labels: Sequence[np.ndarray] | zarr.Array
    rows: np.ndarray
    n_classes: int
    export: ExportParams = dataclasses.field(default_factory=ExportParams)
    members: int = 10
    hidden: tuple[int, ...] = (128, 32)
    dropout: float = 0.3
    batch_size: int = 4096
    batches_per_epoch: int = 40
    epochs: int = 10
    class_balance: float = 0.5
    match_reference: np.ndarray | None = None

    def __post_init__(self) -> None:
        n_labels = self.labels.shape[0] if hasattr(self.labels, "shape") else len(self.labels)  # zarr or a list
        if n_labels != len(self.rows) or not len(self.rows):
            raise ValueError(
                f"GanBudgetRoute: expected one annotation per store row and at least one, received "
                f"{n_labels} annotations for {len(self.rows)} rows"
            )
        if self.export.match_pool and self.match_reference is None:
            raise ValueError(
                "GanBudgetRoute: export.match_pool is set but no match_reference (training crops' colour histograms) "
                "was given; pass one or set export.match_pool = 0"
            )

    def pairs(
        self, images: np.ndarray, masks: np.ndarray, n_pairs: int, seed: int
    ) -> tuple[np.ndarray, np.ndarray, int]:
        """Train the ensemble on ``min(N, annotated)`` generated images chosen by ``seed``; synthesise and label.

        The classifier never sees more annotated images than the budget; when fewer are annotated than N it uses
        them all (fewer labels than the budget, never more) and says how many in the returned count.
        """
        n = min(len(images), len(self.rows))
        pick = np.sort(np.random.default_rng(seed).choice(len(self.rows), n, replace=False))
        stream = BatchStream(
            self.features,
            [np.asarray(self.labels[int(j)]) for j in pick],
            self.rows[pick],
            self.batch_size,
            self.batches_per_epoch,
            self.n_classes,
            self.class_balance,
            seed=seed,
        )
        mlp = MLPConfig(self.features.n_features, self.n_classes, self.hidden, self.dropout)
        ensemble = PixelEnsemble(EnsembleConfig(mlp, self.members), seed=seed)
        ensemble.fit(stream, None, TrainConfig(max_epochs=self.epochs, patience=0, seed=seed))
        # Over-generate so that dropping the most uncertain share (as the export does) still leaves n_pairs.
        total = int(np.ceil(n_pairs / (1.0 - self.export.drop_uncertain))) + 1
        seeds = self.seeds(total, seed)
        batch = synthesize_seeds(self.generator, ensemble, seeds, self.export)
        keep = np.flatnonzero(~uncertain_to_drop(batch.uncertainty, self.export.drop_uncertain))[:n_pairs]
        return batch.images[keep], batch.masks[keep], n

    def seeds(self, count: int, seed: int) -> np.ndarray:
        """The ``count`` seeds synthesised for budget seed ``seed``: the first ``count`` of its range, or, with
        ``export.match_pool`` k, those of a k times larger range whose images match the crops' colours (ascending,
        so a pool of one is the unmatched choice)."""
        size = count * max(1, self.export.match_pool)
        if size > SEEDS_PER_BUDGET_SEED:
            raise ValueError(
                f"GanBudgetRoute: {size} candidate seeds per budget seed ({count} pairs x match_pool "
                f"{self.export.match_pool}) exceed the {SEEDS_PER_BUDGET_SEED} each seed owns; lower synthetic_max or "
                f"match_pool"
            )
        pool = BUDGET_SEED_BASE + seed * SEEDS_PER_BUDGET_SEED + np.arange(size, dtype=np.int64)
        export = self.export
        return draw_seeds(self.generator, pool, count, export.match_pool, export.psi, self.match_reference, seed)


# ----------------------------------------------------------------------------------------------------------------
# LDM route (DISC).


def encode_uint8(ae: Autoencoder, scale: float, images: np.ndarray, batch: int = 64) -> torch.Tensor:
    """Scaled latents of uint8 crops, on the autoencoder's device, in chunks of ``batch``."""
    device = next(ae.parameters()).device
    return torch.cat([encode(ae, _to_unit(images[i : i + batch], device), scale) for i in range(0, len(images), batch)])


def pretrain_unconditional(
    cfg: LdmConfig,
    train_cfg: LdmTrainConfig,
    latents: torch.Tensor,
    steps: int,
    device: torch.device | str = "cpu",
    init: dict[str, torch.Tensor] | None = None,
) -> dict[str, torch.Tensor]:
    """A denoiser trained only through the null condition on unlabelled latents: an initialisation with no label.

    Args:
        init: Label-free weights to continue from (:func:`read_label_free`), e.g. the shipped long pretraining;
            None starts from random weights.

    Returns:
        The EMA weights (what a fine-tune starts from).
    """
    if steps < 1 or not len(latents):
        raise ValueError(f"pretrain_unconditional: expected steps >= 1 and latents, received {steps}, {len(latents)}")
    trainer = LdmTrainer(cfg, train_cfg, device)
    if init is not None:
        trainer.model.load_state_dict(init)
        trainer.ema.load_state_dict(init)
    gen = torch.Generator().manual_seed(train_cfg.seed)
    null = torch.full((train_cfg.batch_size, cfg.resolution, cfg.resolution), NULL_LABEL, dtype=torch.long)
    for _ in range(steps):
        idx = torch.randint(len(latents), (train_cfg.batch_size,), generator=gen)
        trainer.train_step(latents[idx], null)
    return {k: v.detach().clone() for k, v in trainer.sampling_model.state_dict().items()}


@dataclass
class LdmBudgetRoute:
    """The mask-conditioned LDM route with its conditioning learned from the budget's N crops.

    Attributes:
        autoencoder, scale: Encoder/decoder (trained on images only: no label).
        cfg, train_cfg: The denoiser and its optimiser (``train_cfg.seed`` is replaced by the budget seed).
        base: Weights from :func:`pretrain_unconditional` (no label seen).
        unlabelled: Latents of unlabelled tissue crops, kept in every fine-tune batch through the null condition.
        steps: Fine-tune steps per budget.
        unlabelled_share: Share of each fine-tune batch drawn from ``unlabelled`` (null condition).
        sampler, sampling_steps, guidance: How pairs are sampled (as the export).
    """

    autoencoder: Autoencoder
    scale: float
    cfg: LdmConfig
    train_cfg: LdmTrainConfig
    base: dict[str, torch.Tensor]
    unlabelled: torch.Tensor
    steps: int = 300
    unlabelled_share: float = 0.25
    sampler: str = "ddim"
    sampling_steps: int = 20
    guidance: float = 1.0

    def __post_init__(self) -> None:
        if not 0 <= self.unlabelled_share < 1 or self.steps < 1:
            raise ValueError(
                f"LdmBudgetRoute: expected 0 <= unlabelled_share < 1 and steps >= 1, received "
                f"{self.unlabelled_share}, {self.steps}"
            )

    def fine_tune(self, images: np.ndarray, masks: np.ndarray, seed: int) -> LdmTrainer:
        """The base denoiser, trained ``steps`` steps on the N crops' dihedral copies (+ null-slot tissue)."""
        device = next(self.autoencoder.parameters()).device
        trainer = LdmTrainer(self.cfg, dataclasses.replace(self.train_cfg, seed=seed), device)
        trainer.model.load_state_dict(self.base)
        trainer.ema.load_state_dict(self.base)
        x, y = dihedral(images, masks)
        z = encode_uint8(self.autoencoder, self.scale, x)
        y = torch.from_numpy(y).long()
        b = self.train_cfg.batch_size
        b_un = int(round(b * self.unlabelled_share)) if len(self.unlabelled) else 0
        gen = torch.Generator().manual_seed(seed)
        null = torch.full((b_un, self.cfg.resolution, self.cfg.resolution), NULL_LABEL, dtype=torch.long)
        for _ in range(self.steps):
            idx = torch.randint(len(z), (b - b_un,), generator=gen)
            z_batch, m_batch = z[idx], y[idx]
            if b_un:
                un = torch.randint(len(self.unlabelled), (b_un,), generator=gen)
                z_batch, m_batch = torch.cat([z_batch, self.unlabelled[un]]), torch.cat([m_batch, null])
            trainer.train_step(z_batch, m_batch)
        return trainer

    def pairs(
        self, images: np.ndarray, masks: np.ndarray, n_pairs: int, seed: int
    ) -> tuple[np.ndarray, np.ndarray, int]:
        """Fine-tune on the N crops, then sample one image for each of ``n_pairs`` dihedral copies of their masks."""
        trainer = self.fine_tune(images, masks, seed)
        _, variants = dihedral(images, masks)
        rng = np.random.default_rng(seed)
        out_masks = variants[rng.permutation(np.resize(np.arange(len(variants)), n_pairs))]
        seeds = BUDGET_SEED_BASE + seed * SEEDS_PER_BUDGET_SEED + np.arange(n_pairs, dtype=np.int64)
        z = sample_latents(
            trainer.sampling_model,
            torch.from_numpy(out_masks).long(),
            seeds,
            self.sampler,
            self.sampling_steps,
            self.guidance,
        )
        return latents_to_uint8(self.autoencoder, z, self.scale), out_masks.astype(np.uint8), len(images)


# ----------------------------------------------------------------------------------------------------------------
# GenSeg route.


@dataclass
class GensegBudgetRoute:
    """GenSeg trained per budget: G, its architecture A and the segmenter see the N crops; A's validation loss uses
    the curve's validation crops (the same real crops λ is chosen on, never test tiles).

    Attributes:
        validation: Real labelled validation crops (images uint8 ``[V, R, R, 3]``, masks ``[V, R, R]``).
        unlabelled: Unlabelled kept-tissue crops for appearance, or None.
        n_classes: K.
        cfg: A ``ops.genseg.budget.BudgetConfig`` or a preset name (``quick``, ``demo``, ``paper``).
    """

    validation: tuple[np.ndarray, np.ndarray]
    unlabelled: np.ndarray | None
    n_classes: int
    cfg: BudgetConfig | str = "quick"

    def pairs(
        self, images: np.ndarray, masks: np.ndarray, n_pairs: int, seed: int
    ) -> tuple[np.ndarray, np.ndarray, int]:
        x, y = budget_pairs(images, masks, *self.validation, self.unlabelled, n_pairs, self.n_classes, seed, self.cfg)
        return x, y, len(images)


# ----------------------------------------------------------------------------------------------------------------
# Building the routes from what a finished factory left on disk.


def annotation_set(folder: str | os.PathLike[str]) -> tuple[pd.DataFrame, zarr.Array, list[str]]:
    """An imported annotation set of generated images: its index, label array ``[n, H, W]`` and class names."""
    folder = Path(folder)
    store = folder / "labels.zarr"
    if not store.exists():
        raise FileNotFoundError(f"{store}: not an annotation set (no labels.zarr); materialize `annotations` first")
    group = zarr.open_group(str(store), mode="r")
    return pd.read_parquet(folder / "index.parquet"), group["labels"], list(group.attrs["classes"])


def gan_budget_route(
    checkpoint: str | os.PathLike[str],
    features: str | os.PathLike[str],
    annotations: str | os.PathLike[str],
    blocks: int,
    class_names: Sequence[str],
    psi: float = ExportParams.psi,
    match_pool: int = 0,
    ignore_uncertain: float = 0.0,
    tiles: pd.DataFrame | None = None,
    reference_crops: int = REFERENCE_CROPS,
    **settings: Any,
) -> GanBudgetRoute:
    """The GAN route from its generator checkpoint, feature store and annotation set (``settings``: the route's);
    with ``match_pool`` it keeps the samples whose colours match ``reference_crops`` crops of the training ``tiles``
    (a tile table), and with ``ignore_uncertain`` leaves each mask's most uncertain pixels unlabelled, as the export
    does."""
    _, labels, classes = annotation_set(annotations)
    if list(classes) != list(class_names):
        raise ValueError(
            f"{annotations}: the generated images are annotated with classes {classes}, the real pairs with "
            f"{list(class_names)}; annotate both with one class map"
        )
    if match_pool and tiles is None:
        raise ValueError("gan_budget_route: colour matching (match_pool) needs the training tile table (tiles)")
    G = load_generator(checkpoint)
    reference = reference_histograms(tiles, G.cfg.resolution, reference_crops) if match_pool else None
    return GanBudgetRoute(
        G,
        FeatureSampler(features),
        labels,
        np.arange(labels.shape[0]),
        len(classes),
        ExportParams(blocks=blocks, psi=psi, match_pool=match_pool, ignore_uncertain=ignore_uncertain),
        match_reference=reference,
        **settings,
    )


def ldm_budget_route(
    autoencoder: str | os.PathLike[str],
    ldm_checkpoint: str | os.PathLike[str],
    unlabelled_images: np.ndarray,
    pretrain_steps: int,
    train_cfg: LdmTrainConfig | None = None,
    label_free: str | os.PathLike[str] | None = None,
    **settings: Any,
) -> LdmBudgetRoute:
    """The LDM route: the factory's autoencoder and denoiser *architecture* (not its weights, which saw every
    annotated tile), pretrained here without labels on ``unlabelled_images`` for ``pretrain_steps`` steps, from
    random weights or from the label-free weights in ``label_free``."""
    device = pick_device("auto")
    ae, _, scale = load_autoencoder(autoencoder, device)
    cfg = LdmConfig.from_dict(read_ldm_checkpoint(ldm_checkpoint)["config"])
    init = read_label_free(label_free, cfg) if label_free else None
    train_cfg = train_cfg or LdmTrainConfig()
    latents = encode_uint8(ae, scale, unlabelled_images)
    base = pretrain_unconditional(cfg, train_cfg, latents, pretrain_steps, device, init)
    return LdmBudgetRoute(ae, scale, cfg, train_cfg, base, latents, **settings)


@dataclass(frozen=True)
class RouteRetraining:
    """How long each route's labelled part retrains per budget and seed (the bench's and the asset's setting).

    Attributes:
        gan_epochs: Pixel-classifier epochs.
        gan_psi: Truncation psi the GAN route synthesises with: the export's (HDGAN's 0.7), so the curve measures
            the route the export runs. ``bench/gan_psi.py`` prefers 1.0 without labels (SWD to held-out crops), but
            on the demo's N = 4 / 16 / 96 curve 1.0 gave lower label fidelity at every budget and lower gains at 5
            of 6 (arm, budget) points (README, "Truncation").
        gan_match_pool: 0: the GAN route keeps its first seeds; k >= 1: it generates k times the images it needs and
            keeps those whose colours match unlabelled training-slide crops, as the export does (default: the
            export's, ``ExportParams.match_pool``).
        gan_ignore_uncertain: Share of each GAN mask's most uncertain pixels left unlabelled (the export's,
            ``ExportParams.ignore_uncertain``).
        ldm_pretrain_steps: Label-free pretraining steps of the denoiser (once per run, shared by every budget).
        ldm_finetune_steps: Mask-conditioning steps per budget and seed.
        ldm_batch: Latents per denoiser step (pretraining and fine-tuning).
        ldm_guidance: Guidance scale the route samples with.
        unlabelled_crops: Crops of the training slides' kept tiles the denoiser pretrains on (and GenSeg's
            discriminator sees for appearance).
        genseg: GenSeg's per-budget preset.
        ldm_label_free: Label-free denoiser weights the pretraining continues from (``ops.diffusion.label_free``;
            the shipped ``resources/pretrained/ldm_demo_label_free.pt``); None: from random weights.
    """

    gan_epochs: int = 10
    gan_psi: float = ExportParams.psi
    gan_match_pool: int = ExportParams.match_pool
    gan_ignore_uncertain: float = ExportParams.ignore_uncertain
    ldm_pretrain_steps: int = 1500
    ldm_finetune_steps: int = 400
    ldm_batch: int = 32
    ldm_guidance: float = 4.0  # as the demo export samples (bench/ldm_guidance.py: best of 1-8 on validation seeds)
    unlabelled_crops: int = 2048
    genseg: str = "demo"  # ops.genseg.budget.BUDGET_PRESETS
    ldm_label_free: str | None = None


# Shorter retraining for ``bench/downstream.py --quick`` (N in {4, 16}, 3 seeds: six retrainings per route).
QUICK_RETRAINING = RouteRetraining(
    gan_epochs=4, ldm_pretrain_steps=300, ldm_finetune_steps=100, ldm_batch=16, genseg="quick"
)


@dataclass(frozen=True)
class RouteFiles:
    """Where a finished factory keeps what the routes retrain from (None: that route is not available)."""

    gan_checkpoint: str | None = None
    features: str | None = None
    feature_blocks: int | None = None
    annotations: str | None = None
    autoencoder: str | None = None
    ldm_checkpoint: str | None = None
    training_tiles: str | None = None  # the tile table (parquet) of ``training_tiles``


def build_budget_routes(
    routes: Sequence[str],
    class_names: Sequence[str],
    files: RouteFiles,
    retraining: RouteRetraining,
    progress: Callable[[str], None] | None = None,
    validation: tuple[np.ndarray, np.ndarray] | None = None,
) -> dict[str, GanBudgetRoute | LdmBudgetRoute | GensegBudgetRoute]:
    """The routes of ``routes`` that can retrain per budget (``stylegan2``, ``ldm``, ``genseg``), from a factory's
    files; ``validation`` (the curve's validation crops) is what GenSeg's architecture step learns from.

    Raises:
        ValueError: a requested route whose files are missing (names the missing upstream).
    """
    out: dict[str, GanBudgetRoute | LdmBudgetRoute | GensegBudgetRoute] = {}
    if "stylegan2" in routes:
        need = {"gan_model": files.gan_checkpoint, "generated_features": files.features}
        if retraining.gan_match_pool:
            need["training_tiles"] = files.training_tiles
        _require(need | {"annotations": files.annotations}, "stylegan2")
        out["stylegan2"] = gan_budget_route(
            files.gan_checkpoint, files.features, files.annotations, files.feature_blocks or 5, class_names,
            psi=retraining.gan_psi, match_pool=retraining.gan_match_pool,
            ignore_uncertain=retraining.gan_ignore_uncertain,
            tiles=pd.read_parquet(files.training_tiles) if retraining.gan_match_pool else None,
            reference_crops=retraining.unlabelled_crops, epochs=retraining.gan_epochs,
        )  # fmt: skip
    if "genseg" in routes:
        _require({"training_tiles": files.training_tiles}, "genseg")
        if validation is None:
            raise ValueError("route 'genseg' cannot retrain per budget without validation crops (its stage A)")
        resolution = validation[0].shape[1]
        unlabelled = _unlabelled_crops(files.training_tiles, resolution, retraining.unlabelled_crops)
        out["genseg"] = GensegBudgetRoute(validation, unlabelled, len(class_names), retraining.genseg)
    if "ldm" in routes:
        need = {"autoencoder": files.autoencoder, "ldm_model": files.ldm_checkpoint}
        _require(need | {"training_tiles": files.training_tiles}, "ldm")
        resolution = LdmConfig.from_dict(read_ldm_checkpoint(files.ldm_checkpoint)["config"]).resolution
        started = time.perf_counter()
        out["ldm"] = ldm_budget_route(
            files.autoencoder,
            files.ldm_checkpoint,
            _unlabelled_crops(files.training_tiles, resolution, retraining.unlabelled_crops),
            retraining.ldm_pretrain_steps,
            LdmTrainConfig(batch_size=retraining.ldm_batch),
            retraining.ldm_label_free,
            steps=retraining.ldm_finetune_steps,
            guidance=retraining.ldm_guidance,
        )
        if progress is not None:
            progress(
                f"ldm: denoiser pretrained without labels, {retraining.ldm_pretrain_steps} steps from "
                f"{retraining.ldm_label_free or 'random weights'} in "
                f"{time.perf_counter() - started:.0f} s"
            )
    return out


def _unlabelled_crops(tile_table: str | os.PathLike[str], resolution: int, count: int) -> np.ndarray:
    """``count`` seeded crops of the training slides' kept tiles (no label): what the routes learn appearance from."""
    return training_crops(pd.read_parquet(tile_table), resolution, count)


def _require(files: dict[str, str | None], route: str) -> None:
    missing = sorted(name for name, path in files.items() if not path)
    if missing:
        raise ValueError(
            f"route {route!r} cannot retrain per budget: {', '.join(missing)} not materialized; materialize them or "
            f"leave per_budget off (the exported pairs are then used)"
        )
