"""DISC's four models and unlabelled tiles, measured by label fidelity (the ``--parts disc`` section of bench/ldm.py).

Every model starts from the shipped demo LDM and autoencoder (``resources/pretrained``), trained on the demo slides,
which are made from the same skimage IHC image the bench crops; the models then differ only in what this section
does to them, and all are scored on the same held-out bank masks and seeds:

- ``sd``: the shipped LDM fine-tuned ``base_steps`` on annotated crops only (the mask slot), sampled with DDIM;
- ``sd_sc``: the same weights sampled with DISC's separated conditions (``samplers.sc_sample``);
- ``sd_disc``: ``sd`` fine-tuned ``disc_steps`` on fused separated latents of ``disc_seeds`` seeds under random
  bank masks (Eq. 3), DDIM;
- ``sd_disc_cotrain``: the same, each step's loss the mean of L_DISC and L_LDM on real annotated crops, DDIM;
- ``sd_unlab``: the shipped LDM fine-tuned ``base_steps`` with half of each batch unlabelled crops through the null
  slot (DiffInfinite), DDIM.

Every model samples with classifier-free guidance ``guidance`` (the separated trajectories DISC stores too), because
guidance decides fidelity here (the shipped LDM with DDIM: 0.11 at 1, 0.36 at 2, 0.57 at 4 on 16 pairs);
``sd_g1`` and ``sd_unlab_g1`` are the two base models without it.

"Annotated" crops come only from the top-left ``LABELLED`` box of the training area (a few annotated tiles);
unlabelled crops from the whole training area, so unlabelled tissue is 4x the annotated area.

Fidelity: each generated 64-px image is labelled by the DEMO stand-in annotator (``demo_labels``) and compared
with the mask it was generated from (``ops.export.label_scores.fidelity``: Dice, mean over classes present). The
ceiling in the same run: real held-out crops, whose masks were cut from the labels of the whole image, scored the
same way (below 1.0: a 64-px crop has less context than the whole image). Seconds per pair: sampling and decoding
``eval_images`` pairs, divided by their number.
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from ops.diffusion.autoencoder import encode, load_autoencoder
from ops.diffusion.denoiser import LdmTrainConfig, LdmTrainer, load_denoiser, with_unlabelled
from ops.diffusion.distill import DiscBatches, SeparatedLatentSet
from ops.diffusion.mask_bank import MaskBank
from ops.diffusion.samplers import sample_latents
from ops.export.label_scores import fidelity
from ops.export.ldm_route import latents_to_uint8
from ops.labelling.demo_annotator import DEMO_CLASS_MAP, demo_labels

PRETRAINED = Path(__file__).resolve().parents[1] / "resources" / "pretrained"
N_CLASSES = DEMO_CLASS_MAP.n_classes
LABELLED = (192, 192)  # rows, columns of the top-left box annotated crops come from
SAMPLE_STEPS = 20
LDM_TRAIN = dict(lr=5e-4, warmup_steps=50, ema_decay=0.995)  # the ldm_model asset's defaults

Crops = Callable[..., tuple[np.ndarray, np.ndarray]]


def _fidelity(images: np.ndarray, masks: np.ndarray) -> float:
    return float(np.nanmean(fidelity(images, masks, demo_labels, N_CLASSES)[0]))


def _as_input(images: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(images).permute(0, 3, 1, 2).float().div(127.5).sub(1.0)


def _clone(trainer: LdmTrainer) -> LdmTrainer:
    """An independent copy (weights, EMA, optimiser, RNG) through a checkpoint file."""
    with tempfile.TemporaryDirectory() as tmp:
        return LdmTrainer.from_checkpoint(trainer.save_checkpoint(Path(tmp) / "c.pt"))


def _shipped(batch: int) -> tuple[LdmTrainer, torch.nn.Module, float]:
    ae_file, ldm_file = PRETRAINED / "autoencoder_demo.pt", PRETRAINED / "ldm_demo_concat.pt"
    for f in (ae_file, ldm_file):
        if not f.is_file():
            raise FileNotFoundError(f"{f} is missing: the disc part starts from the shipped demo weights")
    ae, _, scale = load_autoencoder(ae_file)
    denoiser = load_denoiser(ldm_file)
    trainer = LdmTrainer(denoiser.cfg, LdmTrainConfig(batch_size=batch, seed=0, **LDM_TRAIN))
    trainer.model.load_state_dict(denoiser.state_dict())
    trainer.ema.load_state_dict(denoiser.state_dict())
    return trainer, ae.eval().requires_grad_(False), scale


def _generate(trainer: LdmTrainer, ae, scale: float, masks: np.ndarray, seeds: np.ndarray, sampler: str, g: float):
    start = time.perf_counter()
    z = sample_latents(trainer.sampling_model, torch.from_numpy(masks).long(), seeds, sampler, SAMPLE_STEPS, g)
    images = latents_to_uint8(ae, z, scale)
    return images, (time.perf_counter() - start) / len(seeds)


def run_disc_comparison(
    image: np.ndarray,
    labels: np.ndarray,
    crops: Crops,
    held_bank: MaskBank,
    holdout_x: int,
    batch: int,
    base_steps: int,
    disc_steps: int,
    disc_seeds: int,
    eval_images: int,
    guidance: float,
    log: Callable[[str], None],
) -> dict[str, float]:
    """Train and score the models of the module docstring; returns ``fidelity_<model>`` and ``s_per_pair_<model>``."""
    begin = time.perf_counter()
    sd, ae, scale = _shipped(batch)
    rows, cols = LABELLED
    lab_images, lab_masks = crops(image, labels, 1024, 64, (0, cols), seed=31, rows=(0, rows))
    unlab_images, _ = crops(image, labels, 2048, 64, (0, holdout_x), seed=32)
    with torch.no_grad():
        lab_z = torch.cat([encode(ae, _as_input(lab_images[i : i + 256]), scale) for i in range(0, 1024, 256)])
        unlab_z = torch.cat([encode(ae, _as_input(unlab_images[i : i + 256]), scale) for i in range(0, 2048, 256)])
    lab_m = torch.from_numpy(lab_masks).long()
    rng = np.random.default_rng(0)

    def real_batch(n: int) -> tuple[torch.Tensor, torch.Tensor]:
        idx = torch.from_numpy(rng.choice(len(lab_z), n, replace=False))
        return lab_z[idx], lab_m[idx]

    def mixed_batch() -> tuple[torch.Tensor, torch.Tensor]:
        z, m = real_batch(batch - batch // 2)
        return with_unlabelled(z, m, unlab_z[torch.from_numpy(rng.choice(len(unlab_z), batch // 2, replace=False))])

    unlab = _clone(sd)
    t0 = time.perf_counter()
    for _ in range(base_steps):  # the two base arms interleaved, so load changes hit both alike
        sd.train_step(*real_batch(batch))
        unlab.train_step(*mixed_batch())
    log(
        f"disc: base fine-tune of the shipped LDM, {base_steps} steps of batch {batch} each: annotated only (sd) and "
        f"half unlabelled (sd_unlab), {time.perf_counter() - t0:.0f} s for both; annotated crops from the "
        f"{rows}x{cols} box, unlabelled from the {image.shape[0]}x{holdout_x} training area"
    )

    t0 = time.perf_counter()
    store = SeparatedLatentSet.generate(sd.sampling_model, 7_000_000 + np.arange(disc_seeds), SAMPLE_STEPS, guidance)
    store_s = time.perf_counter() - t0
    disc, cotrain = _clone(sd), _clone(sd)
    train_bank = MaskBank.from_masks(lab_masks, N_CLASSES)
    disc_batches = DiscBatches(store, train_bank.sample, batch, seed=1)
    t0 = time.perf_counter()
    for _ in range(disc_steps):
        disc.train_step(*disc_batches(), cond_dropout=False)
        cotrain.train_step(*disc_batches(), cotrain=real_batch(batch), cond_dropout=False)
    log(
        f"disc: {disc_seeds} seeds x {N_CLASSES} separated latents (guidance {guidance:g}) stored in {store_s:.0f} s; "
        f"{disc_steps} DISC "
        f"steps (sd_disc) and {disc_steps} CoTrain steps (sd_disc_cotrain) from sd in {time.perf_counter() - t0:.0f} s"
        f"; random masks from a bank of the annotated crops"
    )

    seeds = np.arange(eval_images, dtype=np.int64) + 9_000_000
    masks = held_bank.sample(seeds)
    real_images, real_masks = crops(image, labels, eval_images, 64, (holdout_x, image.shape[1]), seed=8)
    out = {"fidelity_real": _fidelity(real_images, real_masks)}
    log(f"disc: fidelity of {eval_images} real held-out crops (ceiling) {out['fidelity_real']:.3f}")
    g = guidance
    arms = {
        "sd_g1": (sd, "ddim", 1.0),
        "sd": (sd, "ddim", g),
        "sd_sc": (sd, "sc", g),
        "sd_disc": (disc, "ddim", g),
        "sd_disc_cotrain": (cotrain, "ddim", g),
        "sd_unlab_g1": (unlab, "ddim", 1.0),
        "sd_unlab": (unlab, "ddim", g),
    }
    for name, (trainer, sampler, scale_g) in arms.items():
        images, per_pair = _generate(trainer, ae, scale, masks, seeds, sampler, scale_g)
        out[f"fidelity_{name}"], out[f"s_per_pair_{name}"] = _fidelity(images, masks), per_pair
        log(
            f"disc: {name:16} ({sampler} {SAMPLE_STEPS} steps, guidance {scale_g:g}): fidelity "
            f"{out[f'fidelity_{name}']:.3f}, {per_pair:.3f} s per pair"
        )
    out["disc_seconds"] = time.perf_counter() - begin
    return out
