"""Mask-conditioned latent diffusion: training and sampling speed, and whether generated images follow their masks.

    python bench/ldm.py [--parts speed,agreement,disc] [--quick] [--threads 1] [--ldm-seconds 180]
                        [--ae-seconds 75] [--eval-images N] [--base-steps 60] [--disc-steps 30] [--disc-seeds 32]
                        [--guidance 4]

Real image-mask pairs without network or slides: ``skimage.data.immunohistochemistry()`` (512 x 512 IHC, taken as
0.5 um/px) is labelled once, whole, by the demo annotator (``demo_annotate``: 6 DEMO STAND-IN classes, not expert
labels); pairs are random crops of image and labels cut at the same place, each with one of the 8 flips/rotations.
The left three quarters of the image are for training, the right quarter is held out (masks and references).

1. Training speed, steps/s and img/s (median step after warm-up, contenders interleaved round by round so load
   changes on a shared machine hit all alike): ``LdmTrainer.train_step`` (UNet forward/backward, AdamW, EMA) on
   ready latents - the autoencoder's encode is not included - for the demo preset (64 px -> 4x16x16 latents,
   batch 32) and the 256-px preset (4x64x64 latents, batch 4), with ``concat`` and ``cross_attention``
   conditioning; and ``AutoencoderTrainer.train_step`` of the demo autoencoder (batch 16). Weights are random:
   they do not change the speed.
2. Sampling speed, images/s for 32 masks from the mask bank, 20 DDIM steps plus autoencoder decode to uint8: the
   demo preset with ``ddim`` (concat and cross_attention) and ``sc`` (separated conditions: one UNet pass per class
   present, so its cost follows the masks). The 256-px preset runs 2 images for a few DDIM steps only; its 20-step
   rate is extrapolated from the time per step plus the measured decode, and the output says so.
3. Mask agreement (``ops.evaluation.metrics.mask_agreement``: each generated pixel takes the class of the nearest
   real class
   mean colour; accuracy against its own mask / against another image's mask). The demo autoencoder is trained for
   ``--ae-seconds`` of wall time, training crops are encoded once into a latent pool, then one demo LDM per
   conditioning trains for ``--ldm-seconds`` of its own step time (steps interleaved, same batches), so the two
   conditionings are compared at equal wall time - which is what decides the default on a CPU. Hyper-parameters
   are the ``ldm_model`` asset's (lr 5e-4, 50 warm-up steps, EMA 0.995; batch from the demo preset). Each model
   generates ``--eval-images`` images from masks of a mask bank built from held-out crops, with 20 DDIM steps
   (and SC for the concat model). Baselines in the same run: real held-out pairs scored the same way
   (``real_mask_agreement``, the ceiling colour allows) and each model's ``chance``: its images scored against
   masks they were not generated from (masks rolled by one image). 1.0 is what an unconditional generator scores.
4. Label fidelity of DISC's four models (SD, SD-SC, SD-DISC, SD-DISC-CoTrain) and of training with unlabelled
   tiles through the null slot (at guidance 4 and 1), all from the shipped demo weights, for the same held-out
   bank masks and seeds; fidelity is the export's stand-in metric (``ops.export.label_scores.fidelity`` with the
   demo annotator) and seconds per pair include decoding. See ``bench/disc_fidelity.py`` for the protocol.

Timings are wall-clock on whatever else the machine runs; compare ratios within one run, not absolute numbers across
runs. ``--threads`` defaults to 1: on a shared 2-core machine two OpenMP threads often wait on each other and run
slower than one. ``--quick`` (under ~4 min on 2 cores): 5 timed demo steps, one 256-px step without warm-up (the
first 256-px step is not slower), one sampling repeat, 20 s autoencoder, 45 s per LDM, 32 scored images. Full
(under ~12 min): 15 timed demo steps, 2 timed 256-px steps after one warm-up, 2 sampling repeats, 75 s autoencoder,
180 s per LDM, 64 scored images.

``--parts`` picks sections (``speed``: 1-2, ``agreement``: 3, ``disc``: 4). Section 4 took 15.6 min with one
thread on the shared 2-core machine (load average 5-6) at its defaults (60 base steps per arm, 32 stored seeds,
30 DISC steps, 32 scored pairs, guidance 4); ``--quick`` 7 min.

Last line, the keys of the sections run: ``ldm_train_steps_per_s_demo_concat=<x> ldm_train_steps_per_s_demo_xattn=<x>
ldm_train_steps_per_s_256_concat=<x> ldm_train_steps_per_s_256_xattn=<x> sample_img_per_s_demo_ddim20=<x>
sample_img_per_s_demo_sc20=<x> sample_img_per_s_256_ddim20=<x> ae_train_steps_per_s=<x> mask_agreement=<x>
mask_agreement_xattn=<x> mask_agreement_sc=<x> real_mask_agreement=<x> mask_chance=<x>`` (``mask_agreement`` and
``mask_chance``: concat, the default conditioning, with DDIM); section 4 adds ``fidelity_<model>`` and
``s_per_pair_<model>`` for ``sd_g1 sd sd_sc sd_disc sd_disc_cotrain sd_unlab_g1 sd_unlab``, ``fidelity_real``
and ``disc_seconds``.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
import yaml
from skimage import data

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from disc_fidelity import run_disc_comparison  # noqa: E402 - bench/ is on sys.path when a script runs

from ops.diffusion.autoencoder import (  # noqa: E402
    AutoencoderTrainer,
    build_autoencoder,
    encode,
    get_autoencoder_config,
    reconstruction_metrics,
)
from ops.diffusion.denoiser import CONDITIONINGS, LdmTrainConfig, LdmTrainer, MaskConditionedUNet, get_ldm_config  # noqa: E402
from ops.diffusion.mask_bank import MaskBank  # noqa: E402
from ops.diffusion.samplers import ddim_sample, sample_latents  # noqa: E402
from ops.evaluation.metrics import mask_agreement  # noqa: E402
from ops.export.ldm_route import latents_to_uint8  # noqa: E402
from ops.labelling.demo_annotator import DEMO_CLASS_MAP, demo_annotate  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
DEMO_PRESET = ROOT / "pipelines" / "presets" / "demo.yaml"
N_CLASSES = DEMO_CLASS_MAP.n_classes
HOLDOUT_X = 384  # image columns >= this (the right quarter of the 512-px image) are held out
BATCH = {"demo": 32, "256": 4}  # demo: the preset's LDM batch; 256 px: what keeps a CPU step near 10 s
SHORT = {"concat": "concat", "cross_attention": "xattn"}
SAMPLE_IMAGES = 32  # masks denoised together when timing sampling (sample_latents' default chunk)
SAMPLE_STEPS = 20  # DDIM steps, as the demo preset's previews and export
LDM_TRAIN = dict(lr=5e-4, warmup_steps=50, ema_decay=0.995)  # the ldm_model asset's defaults (LdmTrainingConfig)


# ----------------------------------------------------------------------------------------------------------------
# Real pairs.


def _dihedral(a: np.ndarray, t: int) -> np.ndarray:
    a = np.rot90(a, t % 4)
    return a[:, ::-1] if t >= 4 else a


def crops(
    image: np.ndarray,
    labels: np.ndarray,
    n: int,
    size: int,
    columns: tuple[int, int],
    seed: int,
    rows: tuple[int, int] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """``n`` aligned random ``size``-px crops of image and labels inside ``columns`` [x0, x1) (and ``rows`` [y0, y1),
    default all), each flipped/rotated by one of the 8 dihedral transforms: ``uint8 [n, size, size, 3]`` and
    ``uint8 [n, size, size]``."""
    rng = np.random.default_rng(seed)
    y0, y1 = rows or (0, image.shape[0])
    ys = rng.integers(y0, y1 - size + 1, n)
    xs = rng.integers(columns[0], columns[1] - size + 1, n)
    ts = rng.integers(0, 8, n)
    images = np.stack([_dihedral(image[y : y + size, x : x + size], t) for y, x, t in zip(ys, xs, ts, strict=True)])
    masks = np.stack([_dihedral(labels[y : y + size, x : x + size], t) for y, x, t in zip(ys, xs, ts, strict=True)])
    return np.ascontiguousarray(images), np.ascontiguousarray(masks)


def as_input(images: np.ndarray) -> torch.Tensor:
    """``uint8 [B, R, R, 3]`` -> float ``[B, 3, R, R]`` in [-1, 1]."""
    return torch.from_numpy(images).permute(0, 3, 1, 2).float().div(127.5).sub(1.0)


# ----------------------------------------------------------------------------------------------------------------
# Timing.


def _median_seconds(calls: dict[str, Callable[[], object]], warmup: int, rounds: int) -> dict[str, float]:
    """Median seconds per call of each contender; ``warmup`` untimed rounds, then ``rounds`` timed ones, calls
    interleaved round by round so that load changes on a shared machine hit every contender alike."""
    for _ in range(warmup):
        for call in calls.values():
            call()
    times: dict[str, list[float]] = {name: [] for name in calls}
    for _ in range(rounds):
        for name, call in calls.items():
            start = time.perf_counter()
            call()
            times[name].append(time.perf_counter() - start)
    return {name: float(np.median(t)) for name, t in times.items()}


def ldm_train_speed(preset: str, image: np.ndarray, labels: np.ndarray, warmup: int, rounds: int) -> dict[str, float]:
    """Seconds per ``LdmTrainer.train_step`` of each conditioning at ``preset`` (random latents, real masks)."""
    batch = BATCH[preset]
    steps = {}
    for conditioning in CONDITIONINGS:
        cfg = get_ldm_config(preset, N_CLASSES, conditioning=conditioning)
        trainer = LdmTrainer(cfg, LdmTrainConfig(batch_size=batch, seed=0))
        z0 = torch.randn(
            batch, cfg.latent_channels, cfg.latent_size, cfg.latent_size, generator=torch.Generator().manual_seed(0)
        )
        masks = torch.from_numpy(crops(image, labels, batch, cfg.resolution, (0, HOLDOUT_X), seed=1)[1]).long()
        steps[conditioning] = lambda tr=trainer, z=z0, m=masks: tr.train_step(z, m)
    return _median_seconds(steps, warmup, rounds)


def ae_train_speed(image: np.ndarray, labels: np.ndarray, batch: int, warmup: int, rounds: int) -> float:
    """Seconds per ``AutoencoderTrainer.train_step`` of the demo autoencoder on real crops."""
    trainer = AutoencoderTrainer(get_autoencoder_config("demo"), seed=0)
    x = as_input(crops(image, labels, batch, 64, (0, HOLDOUT_X), seed=2)[0])
    return _median_seconds({"ae": lambda: trainer.train_step(x)}, warmup, rounds)["ae"]


def demo_sample_speed(masks: np.ndarray, repeats: int) -> dict[str, float]:
    """Images/s of bank masks -> 20-step latents -> uint8 images, per (conditioning, sampler), random weights."""
    torch.manual_seed(0)
    ae = build_autoencoder(get_autoencoder_config("demo")).eval().requires_grad_(False)
    seeds = np.arange(len(masks), dtype=np.int64)
    m = torch.from_numpy(masks).long()
    calls = {}
    for conditioning, sampler in (("concat", "ddim"), ("concat", "sc"), ("cross_attention", "ddim")):
        model = MaskConditionedUNet(get_ldm_config("demo", N_CLASSES, conditioning=conditioning)).eval()
        sample_latents(model, m[:2], seeds[:2], sampler, 2)  # warm-up: allocator, kernels
        calls[f"{SHORT[conditioning]}_{sampler}"] = lambda mo=model, s=sampler: latents_to_uint8(
            ae, sample_latents(mo, m, seeds, s, SAMPLE_STEPS), 1.0
        )
    return {name: len(masks) / t for name, t in _median_seconds(calls, 0, repeats).items()}


def speed_256_sampling(masks: np.ndarray, steps: int) -> dict[str, float]:
    """256-px preset (concat, DDIM): seconds per step for ``len(masks)`` images and seconds to decode them."""
    torch.manual_seed(0)
    model = MaskConditionedUNet(get_ldm_config("256", N_CLASSES)).eval()
    ae = build_autoencoder(get_autoencoder_config("256")).eval().requires_grad_(False)
    m, seeds = torch.from_numpy(masks).long(), np.arange(len(masks), dtype=np.int64)
    ddim_sample(model, m, seeds, 1)  # warm-up
    start = time.perf_counter()
    z = ddim_sample(model, m, seeds, steps)
    per_step = (time.perf_counter() - start) / steps
    start = time.perf_counter()
    latents_to_uint8(ae, z, 1.0)
    decode = time.perf_counter() - start
    return {"per_step": per_step, "decode": decode, "img_per_s_20": len(masks) / (SAMPLE_STEPS * per_step + decode)}


# ----------------------------------------------------------------------------------------------------------------
# Mask agreement at equal wall time.


def train_autoencoder(
    image: np.ndarray, labels: np.ndarray, seconds: float, batch: int, held: torch.Tensor
) -> tuple[AutoencoderTrainer, dict]:
    """Demo autoencoder trained for ``seconds`` of wall time on training-region crops; latent scale fitted."""
    trainer = AutoencoderTrainer(get_autoencoder_config("demo"), seed=0)
    before = reconstruction_metrics(trainer.model, held)
    start = time.perf_counter()
    while time.perf_counter() - start < seconds:
        trainer.train_step(as_input(crops(image, labels, batch, 64, (0, HOLDOUT_X), seed=10_000 + trainer.step)[0]))
    spent = time.perf_counter() - start
    trainer.fit_latent_scale(
        [as_input(crops(image, labels, 64, 64, (0, HOLDOUT_X), seed=20_000 + i)[0]) for i in range(4)]
    )
    return trainer, {
        "steps": trainer.step,
        "seconds": spent,
        "psnr_before": before["psnr"],
        "psnr": reconstruction_metrics(trainer.model, held)["psnr"],
    }


def encode_pool(trainer: AutoencoderTrainer, images: np.ndarray, chunk: int = 256) -> torch.Tensor:
    """Scaled latents of ``images`` (encoded once; the LDM's wall budget then goes to its own steps)."""
    return torch.cat(
        [
            encode(trainer.model, as_input(images[i : i + chunk]), trainer.latent_scale)
            for i in range(0, len(images), chunk)
        ]
    )


def train_ldms_equal_time(
    latents: torch.Tensor, masks: torch.Tensor, ae_cfg, batch: int, seconds: float
) -> tuple[dict[str, LdmTrainer], dict[str, dict]]:
    """One demo LDM per conditioning, each trained for ``seconds`` of its own step time on the same batches.

    Steps are interleaved (the one with less time spent goes next), so load changes hit both alike.
    """
    trainers, rngs, spent, losses = {}, {}, {}, {}
    for conditioning in CONDITIONINGS:
        cfg = get_ldm_config(
            "demo",
            N_CLASSES,
            conditioning=conditioning,
            latent_channels=ae_cfg.latent_channels,
            latent_size=ae_cfg.latent_resolution,
            resolution=ae_cfg.resolution,
        )
        trainers[conditioning] = LdmTrainer(cfg, LdmTrainConfig(batch_size=batch, seed=0, **LDM_TRAIN))
        rngs[conditioning] = np.random.default_rng(0)  # the same batch sequence for every conditioning
        spent[conditioning], losses[conditioning] = 0.0, []
    while min(spent.values()) < seconds:
        conditioning = min(spent, key=spent.get)
        idx = torch.from_numpy(rngs[conditioning].choice(len(latents), batch, replace=False))
        start = time.perf_counter()
        stats = trainers[conditioning].train_step(latents[idx], masks[idx])
        spent[conditioning] += time.perf_counter() - start
        losses[conditioning].append(stats["loss"])
    info = {
        c: {"steps": t.step, "images": t.images_seen, "seconds": spent[c], "loss": float(np.mean(losses[c][-50:]))}
        for c, t in trainers.items()
    }
    return trainers, info


def generate(
    trainer: LdmTrainer, ae: AutoencoderTrainer, masks: np.ndarray, seeds: np.ndarray, sampler: str
) -> tuple[np.ndarray, float]:
    """uint8 images from the EMA denoiser for ``masks`` (20 DDIM steps), and the seconds it took."""
    start = time.perf_counter()
    z = sample_latents(trainer.sampling_model, torch.from_numpy(masks).long(), seeds, sampler, SAMPLE_STEPS)
    images = latents_to_uint8(ae.model, z, ae.latent_scale)
    return images, time.perf_counter() - start


def _agreement_line(label: str, r: dict[str, float], extra: str = "") -> str:
    return (
        f"  {label:34}: accuracy {r['accuracy']:.3f}  chance (rolled masks) {r['chance']:.3f}  "
        f"mask_agreement {r['mask_agreement']:.3f}{extra}"
    )


def part_speed(args: argparse.Namespace, image: np.ndarray, labels: np.ndarray, held_bank: MaskBank) -> dict[str, str]:
    """Sections 1 and 2: training and sampling speed."""
    rounds = {"demo": 5 if args.quick else 15, "256": 1 if args.quick else 2}
    warmup = {"demo": 2, "256": 0 if args.quick else 1}
    train_s = {p: ldm_train_speed(p, image, labels, warmup[p], rounds[p]) for p in ("demo", "256")}
    for p, per in train_s.items():
        timed = f"median of {rounds[p]} timed step{'s' if rounds[p] > 1 else ''} after {warmup[p]} warm-up"
        print(
            f"LDM train {p:>4} preset, batch {BATCH[p]:2d} ({timed}): "
            + "  ".join(f"{c} {1 / t:6.2f} steps/s {BATCH[p] / t:7.2f} img/s" for c, t in per.items())
            + f"  (cross_attention / concat time per step {per['cross_attention'] / per['concat']:.2f}x)",
            flush=True,
        )
    ae_s = ae_train_speed(image, labels, args.ae_batch, 2, rounds["demo"])
    print(
        f"autoencoder train demo preset, batch {args.ae_batch}: {1 / ae_s:.2f} steps/s "
        f"{args.ae_batch / ae_s:.1f} img/s",
        flush=True,
    )
    bank_masks = held_bank.sample(np.arange(SAMPLE_IMAGES) + 5_000_000)
    sample = demo_sample_speed(bank_masks, 1 if args.quick else 2)
    print(
        f"sample demo preset, {SAMPLE_IMAGES} bank masks, {SAMPLE_STEPS} steps + decode to uint8: "
        f"concat DDIM {sample['concat_ddim']:.2f} img/s, concat SC {sample['concat_sc']:.2f} img/s "
        f"(SC / DDIM time {sample['concat_ddim'] / sample['concat_sc']:.1f}x), cross_attention DDIM "
        f"{sample['xattn_ddim']:.2f} img/s",
        flush=True,
    )
    big_steps = 2 if args.quick else 4
    big = speed_256_sampling(crops(image, labels, 2, 256, (0, HOLDOUT_X), seed=4)[1], big_steps)
    print(
        f"sample 256 preset, concat DDIM, 2 images: {big['per_step']:.2f} s per step (measured over {big_steps} "
        f"steps), decode {big['decode']:.2f} s -> EXTRAPOLATED to {SAMPLE_STEPS} steps: "
        f"{big['img_per_s_20']:.3f} img/s",
        flush=True,
    )
    return {
        "ldm_train_steps_per_s_demo_concat": f"{1 / train_s['demo']['concat']:.3f}",
        "ldm_train_steps_per_s_demo_xattn": f"{1 / train_s['demo']['cross_attention']:.3f}",
        "ldm_train_steps_per_s_256_concat": f"{1 / train_s['256']['concat']:.4f}",
        "ldm_train_steps_per_s_256_xattn": f"{1 / train_s['256']['cross_attention']:.4f}",
        "sample_img_per_s_demo_ddim20": f"{sample['concat_ddim']:.3f}",
        "sample_img_per_s_demo_sc20": f"{sample['concat_sc']:.3f}",
        "sample_img_per_s_256_ddim20": f"{big['img_per_s_20']:.4f}",
        "ae_train_steps_per_s": f"{1 / ae_s:.3f}",
    }


def part_agreement(
    args: argparse.Namespace, image: np.ndarray, labels: np.ndarray, held_bank: MaskBank
) -> dict[str, str]:
    """Section 3: mask agreement of the two conditionings trained from scratch at equal wall time."""
    ae_seconds = args.ae_seconds if args.ae_seconds is not None else (20.0 if args.quick else 75.0)
    ldm_seconds = args.ldm_seconds if args.ldm_seconds is not None else (45.0 if args.quick else 180.0)
    eval_images = args.eval_images or (32 if args.quick else 64)
    held_x = as_input(crops(image, labels, 64, 64, (HOLDOUT_X, 512), seed=5)[0])
    ae, ae_info = train_autoencoder(image, labels, ae_seconds, args.ae_batch, held_x)
    print(
        f"quality: autoencoder demo preset, {ae_info['steps']} steps in {ae_info['seconds']:.0f} s: held-out "
        f"PSNR {ae_info['psnr_before']:.1f} -> {ae_info['psnr']:.1f} dB, latent scale {ae.latent_scale:.3f}",
        flush=True,
    )
    pool_images, pool_masks = crops(image, labels, 2048 if args.quick else 4096, 64, (0, HOLDOUT_X), seed=6)
    latents = encode_pool(ae, pool_images)
    trainers, ldm_info = train_ldms_equal_time(
        latents, torch.from_numpy(pool_masks).long(), ae.cfg, args.ldm_batch, ldm_seconds
    )
    print(
        f"  LDM demo preset, batch {args.ldm_batch}, {ldm_seconds:.0f} s of step time each (interleaved, same "
        f"batches) on {len(latents)} encoded training crops: "
        + "; ".join(
            f"{c} {i['steps']} steps ({i['images'] / i['seconds']:.1f} img/s, loss last 50 {i['loss']:.4f})"
            for c, i in ldm_info.items()
        ),
        flush=True,
    )
    eval_seeds = np.arange(eval_images, dtype=np.int64) + 9_000_000
    eval_masks = held_bank.sample(eval_seeds)
    ref_images, ref_masks = crops(image, labels, 128, 64, (HOLDOUT_X, 512), seed=7)
    real_images, real_masks = crops(image, labels, eval_images, 64, (HOLDOUT_X, 512), seed=8)
    real = mask_agreement(real_images, real_masks, ref_images, ref_masks, N_CLASSES)
    print(
        f"  mask agreement on {eval_images} images from held-out bank masks, {SAMPLE_STEPS} steps; class "
        f"colours from {len(ref_images)} held-out real pairs:",
        flush=True,
    )
    print(_agreement_line("real held-out pairs (ceiling)", real), flush=True)
    scores = {}
    for key, conditioning, sampler in (
        ("concat", "concat", "ddim"),
        ("xattn", "cross_attention", "ddim"),
        ("sc", "concat", "sc"),
    ):
        images, seconds = generate(trainers[conditioning], ae, eval_masks, eval_seeds, sampler)
        scores[key] = mask_agreement(images, eval_masks, ref_images, ref_masks, N_CLASSES)
        print(_agreement_line(f"{conditioning} {sampler.upper()}", scores[key], f"  ({seconds:.1f} s)"), flush=True)
    winner = max(("concat", "xattn"), key=lambda k: scores[k]["mask_agreement"])
    print(
        f"  at equal wall time {'concat' if winner == 'concat' else 'cross_attention'} follows masks better "
        f"({scores['concat']['mask_agreement']:.3f} concat vs {scores['xattn']['mask_agreement']:.3f} "
        f"cross_attention, {ldm_info['concat']['steps']} vs {ldm_info['cross_attention']['steps']} steps)",
        flush=True,
    )
    return {
        "mask_agreement": f"{scores['concat']['mask_agreement']:.3f}",
        "mask_agreement_xattn": f"{scores['xattn']['mask_agreement']:.3f}",
        "mask_agreement_sc": f"{scores['sc']['mask_agreement']:.3f}",
        "real_mask_agreement": f"{real['mask_agreement']:.3f}",
        "mask_chance": f"{scores['concat']['chance']:.3f}",
    }


def part_disc(args: argparse.Namespace, image: np.ndarray, labels: np.ndarray, held_bank: MaskBank) -> dict[str, str]:
    """Section 4: fidelity and seconds per pair of DISC's four models and of unlabelled tiles (bench/disc_fidelity)."""
    out = run_disc_comparison(
        image,
        labels,
        crops,
        held_bank,
        HOLDOUT_X,
        args.ldm_batch,
        base_steps=args.base_steps or (30 if args.quick else 60),
        disc_steps=args.disc_steps or (20 if args.quick else 30),
        disc_seeds=args.disc_seeds or (16 if args.quick else 32),
        eval_images=args.eval_images or (16 if args.quick else 32),
        guidance=args.guidance,
        log=lambda line: print(line, flush=True),
    )
    return {k: f"{v:.4f}" if k.startswith("s_per_pair") else f"{v:.3f}" for k, v in out.items()}


PARTS = {"speed": part_speed, "agreement": part_agreement, "disc": part_disc}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument(
        "--parts",
        default="speed,agreement,disc",
        help="comma-separated sections to run: speed (1, 2), agreement (3), disc (4); default all",
    )
    ap.add_argument(
        "--quick",
        action="store_true",
        help="fewer timed steps (one at 256 px), 20 s autoencoder, 45 s per LDM, short DISC fine-tunes",
    )
    ap.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch threads (default 1: on a shared 2-core machine two OpenMP threads often wait on "
        "each other and run slower than one)",
    )
    ap.add_argument(
        "--ae-seconds", type=float, default=None, help="autoencoder training wall time (default 75, quick 20)"
    )
    ap.add_argument(
        "--ldm-seconds",
        type=float,
        default=None,
        help="LDM training step time per conditioning (default 180, quick 45)",
    )
    ap.add_argument(
        "--eval-images",
        type=int,
        default=None,
        help="generated images scored (agreement: default 64, quick 32; disc: default 48, quick 16)",
    )
    ap.add_argument("--base-steps", type=int, default=None, help="disc: base fine-tune steps (default 60, quick 30)")
    ap.add_argument("--disc-steps", type=int, default=None, help="disc: DISC fine-tune steps (default 30, quick 20)")
    ap.add_argument("--disc-seeds", type=int, default=None, help="disc: stored seeds (default 32, quick 16)")
    ap.add_argument("--guidance", type=float, default=4.0, help="disc: classifier-free guidance of sampling (4)")
    args = ap.parse_args()
    parts = [p.strip() for p in args.parts.split(",") if p.strip()]
    unknown = sorted(set(parts) - set(PARTS))
    if unknown or not parts:
        ap.error(f"--parts: unknown {unknown}; expected a comma-separated subset of {sorted(PARTS)}")

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    preset = yaml.safe_load(DEMO_PRESET.read_text())["ops"]
    args.ae_batch = int(preset["autoencoder"]["config"]["batch_size"])
    args.ldm_batch = int(preset["ldm_model"]["config"]["batch_size"])
    begin = time.perf_counter()

    image = data.immunohistochemistry()
    labels = demo_annotate(image)
    shares = np.bincount(labels.ravel(), minlength=N_CLASSES) / labels.size
    print(
        f"skimage immunohistochemistry {image.shape[0]}x{image.shape[1]} labelled by the demo annotator (DEMO "
        f"STAND-IN): "
        + " ".join(f"{c}={s:.2f}" for c, s in zip(DEMO_CLASS_MAP.classes, shares, strict=True))
        + f"; columns >= {HOLDOUT_X} held out; torch threads {torch.get_num_threads()}, load average "
        f"{os.getloadavg()[0]:.1f}",
        flush=True,
    )
    held_bank = MaskBank.from_masks(crops(image, labels, 256, 64, (HOLDOUT_X, 512), seed=3)[1], N_CLASSES)
    results: dict[str, str] = {}
    for name in parts:
        results.update(PARTS[name](args, image, labels, held_bank))
    print(f"total {time.perf_counter() - begin:.0f} s, load average {os.getloadavg()[0]:.1f}", flush=True)
    print(" ".join(f"{k}={v}" for k, v in results.items()))


if __name__ == "__main__":
    main()
