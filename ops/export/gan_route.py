"""Synthetic image-mask pairs: generate, label with the ensemble, score uncertainty, write a batch.

DatasetGAN's recipe, made streaming: each image's generator features are computed, upsampled to the image size,
classified and discarded, so memory is flat in the number of samples. Per-pixel uncertainty is the Jensen-Shannon
divergence across ensemble members; an image's score is the mean of its top 10% pixels; the most uncertain
fraction of each batch is dropped. Optionally each kept mask also leaves its own most uncertain pixels unlabelled
(``ignore_uncertain``): the pixels the members disagree on are the likeliest to be wrong, and every consumer of a
mask (the U-Net loss, the label scores) already skips unlabelled pixels, as it does in expert masks. Seeds are
``seed_base + batch * batch_size + i``, so any batch can be (re)generated on its own and any sample regenerated from
its seed.
"""

from __future__ import annotations

import io
import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from PIL import Image

from ops.gan.appearance_match import draw_seeds
from ops.gan.networks import Generator, images_to_uint8
from ops.labelling.class_maps import IGNORE_INDEX
from ops.labelling.pixel_classifier import PixelEnsemble, image_uncertainty, js_divergence, predict_from_proba


@dataclass(frozen=True)
class ExportParams:
    """How one batch of synthetic pairs is made and filtered.

    Attributes:
        batch_size: Samples per batch (the partition unit).
        seed_base: Offset of the export's seeds, far from the seeds used for annotation samples.
        psi: Truncation psi of the generator.
        blocks: Last K synthesis blocks used as features (must match the classifier's training).
        mode: Ensemble decision, ``mean`` probability or majority ``vote``.
        drop_uncertain: Fraction of each batch with the highest uncertainty dropped (DatasetGAN: 10%).
        top_frac: Share of an image's most uncertain pixels averaged into its score (DatasetGAN: 10%).
        match_pool: 0 (DatasetGAN): a batch is its ``batch_size`` seeds. k >= 1: ``k * batch_size`` candidates are
            generated and the ``batch_size`` whose colours are nearest training-slide crops are kept
            (``ops.gan.appearance_match``; the GAN under-generates some tissue and truncation makes it worse).
            4 by default since 2026-12-07, chosen without labels (``bench/gan_psi.py --match-pool 4``: SWD / floor
            to held-out-slide crops 4.04 vs 6.09 unmatched).
        ignore_uncertain: Share of each mask's pixels, those with the highest JS divergence across members, set to
            ``IGNORE_INDEX`` (unlabelled). Per image, so a seed's mask does not depend on its batch. 0: every pixel
            labelled (DatasetGAN). 0.25 by default since 2026-12-07, chosen on the curve's validation crops
            (N = 96, 5 seeds, mean of the pre-training and mix arms: 0.8029 vs 0.8004 at 0; README, "Unlabelled
            uncertain pixels").
    """

    batch_size: int = 100
    seed_base: int = 1_000_000
    psi: float = 0.7
    blocks: int = 5
    mode: str = "mean"
    drop_uncertain: float = 0.1
    top_frac: float = 0.1
    match_pool: int = 4
    ignore_uncertain: float = 0.25

    def __post_init__(self) -> None:
        if not 0.0 <= self.ignore_uncertain < 1.0:
            raise ValueError(
                f"ExportParams.ignore_uncertain: expected a share of pixels in [0, 1), received {self.ignore_uncertain}"
            )

    def seeds(self, batch: int) -> np.ndarray:
        return self.seed_base + batch * self.batch_size + np.arange(self.batch_size, dtype=np.int64)

    def candidate_seeds(self, batch: int) -> np.ndarray:
        """The seeds a colour-matched batch chooses from: ``match_pool * batch_size`` of its own, disjoint from
        every other batch's."""
        size = self.batch_size * max(1, self.match_pool)
        return self.seed_base + batch * size + np.arange(size, dtype=np.int64)

    def batch_seeds(self, G: Generator, batch: int, reference: np.ndarray | None) -> np.ndarray:
        """The seeds batch ``batch`` synthesises: its own range, or (``match_pool``) the candidates whose colours
        match ``reference`` (``ops.gan.appearance_match.reference_histograms``), matched in a batch-seeded order."""
        return draw_seeds(G, self.candidate_seeds(batch), self.batch_size, self.match_pool, self.psi, reference, batch)

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class SyntheticBatch:
    """One generated batch before filtering (all arrays share the sample axis)."""

    seeds: np.ndarray  # int64 [B]
    z: np.ndarray  # float32 [B, z_dim]
    w: np.ndarray  # float32 [B, num_ws, w_dim]
    images: np.ndarray  # uint8 [B, R, R, 3]
    masks: np.ndarray  # uint8 [B, R, R]
    uncertainty: np.ndarray  # float32 [B], mean JS divergence of the top ``top_frac`` pixels

    def latent_arrays(self) -> dict[str, np.ndarray]:
        """What regenerates the batch: seeds and latents (``latents.npz`` in the export)."""
        return {"seeds": self.seeds, "z": self.z, "w": self.w}


@torch.no_grad()
def pixel_features(feats: list[torch.Tensor], size: int) -> torch.Tensor:
    """Blocks ``[1, C_k, r_k, r_k]`` -> per-pixel features ``[size*size, sum C_k]``.

    Blocks are rounded through float16 first, exactly as the feature store keeps them for training, then
    upsampled bilinearly (align_corners=False), as the store's on-the-fly sampler does.
    """
    up = [F.interpolate(f.half().float(), size=(size, size), mode="bilinear", align_corners=False) for f in feats]
    return torch.cat(up, dim=1)[0].permute(1, 2, 0).reshape(size * size, -1)


@torch.no_grad()
def synthesize_batch(
    G: Generator,
    ensemble: PixelEnsemble,
    batch: int,
    params: ExportParams,
    device: torch.device | str = "cpu",
    reference: np.ndarray | None = None,
) -> SyntheticBatch:
    """Generate one batch, label every pixel with the ensemble and score each image's uncertainty
    (``reference``: the colour histograms a ``match_pool`` batch matches)."""
    return synthesize_seeds(G, ensemble, params.batch_seeds(G, batch, reference), params, device)


@torch.no_grad()
def synthesize_seeds(
    G: Generator, ensemble: PixelEnsemble, seeds: np.ndarray, params: ExportParams, device: torch.device | str = "cpu"
) -> SyntheticBatch:
    """``synthesize_batch`` for explicit seeds (the unit of work sent to dask workers)."""
    res = G.block_resolutions[-1]
    zs, ws, images, masks, scores = [], [], [], [], []
    for seed in seeds:  # one image at a time: bit-for-bit regenerable, memory flat
        z = torch.randn(G.cfg.z_dim, generator=torch.Generator().manual_seed(int(seed)))[None].to(device)
        w = G.mapping(z, psi=params.psi)
        img, feats = G.synthesis(w, noise_mode="const", return_features=True)
        probs = ensemble.predict_proba(pixel_features(feats[-params.blocks :], res))  # [M, R*R, K]
        js = js_divergence(probs)
        mask = predict_from_proba(probs, params.mode).astype(np.uint8)
        masks.append(leave_uncertain_unlabelled(mask, js, params.ignore_uncertain).reshape(res, res))
        scores.append(image_uncertainty(js.reshape(res, res), params.top_frac))
        images.append(images_to_uint8(img)[0])
        zs.append(z[0].cpu().numpy())
        ws.append(w[0].cpu().numpy())
    return SyntheticBatch(
        seeds, np.stack(zs), np.stack(ws), np.stack(images), np.stack(masks), np.asarray(scores, np.float32)
    )


def leave_uncertain_unlabelled(mask: np.ndarray, uncertainty: np.ndarray, share: float) -> np.ndarray:
    """``mask`` with its ``share`` of pixels of highest ``uncertainty`` set to ``IGNORE_INDEX`` (ties: the first
    pixels in raster order); a copy, same shape."""
    out = np.array(mask, dtype=np.uint8, copy=True)
    n_ignore = int(round(out.size * share))
    if n_ignore:
        order = np.argsort(-np.asarray(uncertainty).ravel(), kind="stable")
        out.reshape(-1)[order[:n_ignore]] = IGNORE_INDEX
    return out


def _synthesize_from_files(
    checkpoint: str, ensemble_path: str, seeds: np.ndarray, params: ExportParams
) -> SyntheticBatch:
    """Worker task: load the networks from their files (models do not travel between processes) and generate."""
    from ops.gan.trainer import load_generator

    return synthesize_seeds(load_generator(checkpoint), PixelEnsemble.load(ensemble_path), seeds, params)


def synthesize_on_dask(
    checkpoint: str | os.PathLike[str],
    ensemble_path: str | os.PathLike[str],
    seeds: np.ndarray,
    params: ExportParams,
    address: str | None = None,
    workers: int = 2,
    scheduler: str = "processes",
) -> SyntheticBatch:
    """``synthesize_seeds`` split over dask workers: a distributed cluster at ``address``, else a local scheduler.

    Each task regenerates its seeds from the checkpoint, so the result equals the single-process one bit for bit.
    """
    import dask

    parts = [p for p in np.array_split(seeds, max(1, workers * 2)) if len(p)]
    tasks = [dask.delayed(_synthesize_from_files)(str(checkpoint), str(ensemble_path), p, params) for p in parts]
    if address:
        from distributed import Client

        with Client(address) as client:
            results = client.gather(client.compute(tasks))
    else:
        results = dask.compute(*tasks, scheduler=scheduler, num_workers=workers)
    fields = ("seeds", "z", "w", "images", "masks", "uncertainty")
    return SyntheticBatch(*(np.concatenate([getattr(r, f) for r in results]) for f in fields))


def uncertain_to_drop(scores: np.ndarray, fraction: float) -> np.ndarray:
    """Boolean mask of the ``fraction`` most uncertain samples (at least one when fraction > 0)."""
    n_drop = int(np.ceil(len(scores) * fraction)) if fraction > 0 else 0
    drop = np.zeros(len(scores), bool)
    if n_drop:
        drop[np.argsort(-scores, kind="stable")[:n_drop]] = True
    return drop


def sample_id(seed: int) -> str:
    return f"syn_{int(seed):010d}"


def write_png(path: Path, array: np.ndarray, palette: list[int] | None = None) -> None:
    """A PNG with no text chunks or metadata (nothing about the source can ride along)."""
    img = Image.fromarray(array)
    if palette is not None:
        img = img.convert("P") if img.mode != "P" else img
        img.putpalette(palette)
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    path.write_bytes(buf.getvalue())


def write_batch(
    out_dir: str | os.PathLike[str],
    images: np.ndarray,
    masks: np.ndarray | Sequence[np.ndarray | None],
    keep: np.ndarray,
    rows: pd.DataFrame,
    palette: list[int],
    arrays: dict[str, dict[str, np.ndarray]],
) -> pd.DataFrame:
    """Write kept pairs (``images/``, ``masks/`` PNG named by ``rows.sample_id``), latents and the batch manifest.

    Args:
        out_dir: A fresh (temp) batch folder; the caller renames it into place.
        images: ``uint8 [B, R, R, 3]`` every generated image of the batch (all generators).
        masks: ``uint8 [B, R, R]`` their masks, or a sequence with ``None`` for samples that have no mask (tiles
            of a class, ``cgan_federated``): no mask file is written for them.
        keep: Boolean [B], which samples to write.
        rows: Per-sample manifest columns computed by the caller (one row per sample, with ``sample_id``).
        palette: PNG palette of the class colours, so masks open coloured in any viewer.
        arrays: ``file name -> arrays`` saved as compressed npz (the GAN's ``latents.npz``: seeds, z, w; the LDM's
            ``ldm_latents.npz``: seeds, masks' latents), kept and dropped samples alike, for regeneration.

    Returns:
        The manifest of the kept samples (paths relative to the export root).
    """
    if not len(images) == len(masks) == len(keep) == len(rows):
        raise ValueError(
            f"write_batch: expected one image, mask, keep flag and row per sample; received "
            f"{len(images)}, {len(masks)}, {len(keep)}, {len(rows)}"
        )
    out_dir = Path(out_dir)
    (out_dir / "images").mkdir(parents=True, exist_ok=True)
    (out_dir / "masks").mkdir(exist_ok=True)
    for name, content in arrays.items():
        np.savez_compressed(out_dir / name, **content)
    ids = rows["sample_id"].to_numpy()
    for i in np.flatnonzero(keep):
        write_png(out_dir / "images" / f"{ids[i]}.png", images[i])
        if masks[i] is not None:
            write_png(out_dir / "masks" / f"{ids[i]}.png", masks[i], palette)
    manifest = rows[keep].reset_index(drop=True)
    manifest.to_parquet(out_dir / "manifest.parquet", index=False)
    rows[~keep].reset_index(drop=True).to_parquet(out_dir / "dropped.parquet", index=False)
    return manifest


def assemble_manifest(export_dir: str | os.PathLike[str]) -> pd.DataFrame:
    """Rebuild the export's top manifest (parquet + CSV) and ``batches.json`` from the finished batch folders.

    Each file is written to a temp name and renamed, so readers see either the old or the new manifest.
    """
    import json

    export_dir = Path(export_dir)
    batch_dirs = sorted(p for p in (export_dir / "batches").iterdir() if p.is_dir() and not p.name.startswith("."))
    tables = [pd.read_parquet(p / "manifest.parquet") for p in batch_dirs]
    manifest = pd.concat(tables, ignore_index=True) if tables else pd.DataFrame()
    for name, write in (
        ("manifest.parquet", lambda p: manifest.to_parquet(p, index=False)),
        ("manifest.csv", lambda p: manifest.to_csv(p, index=False)),
        (
            "batches.json",
            lambda p: p.write_text(
                json.dumps({"finished_batches": [p_.name for p_ in batch_dirs], "samples": len(manifest)}, indent=1)
            ),
        ),
    ):
        tmp = export_dir / f".{name}.tmp-{os.getpid()}"
        write(tmp)
        os.replace(tmp, export_dir / name)
    return manifest
