"""Truncation psi of the demo GAN, judged without labels: SWD to held-out tiles per psi, on a finished demo's data.

    HISTOFACTORY_HOME=<demo home> python bench/gan_psi.py [--psi 0.5 0.7 0.85 1.0] [--images 256] [--repeats 5]
        [--match-pool 4]

Why: truncation (StyleGAN's psi < 1) pulls every sample towards the average tile. HDGAN generated the images its
pathologist annotated at psi 0.7, and the export and the equal-budget GAN route synthesise at the same psi. On the
demo, psi 0.7 samples hold almost no background (stand-in labels: 0.2 % of pixels vs 6.5 % in held-out crops),
and the GAN route's pretraining arm lowers Dice at the largest budget. Which psi to synthesise with should be
chosen without the labels the curve is scored on: this bench measures, for each psi, how far the samples' patch
statistics are from held-out crops of the training slides (the SWD the ``gan_model`` asset reports, as a ratio to
the held-out A-vs-B noise floor, max over pyramid levels), averaged over independent draws of all three sets, and
picks the psi with the lowest mean. One draw is not enough: on the demo GAN, single draws of 64 / 128 / 256 / 512
images chose psi 1.0 / 1.0 / 0.7 / 1.0.

``--match-pool k`` adds, per psi, the samples the GAN budget route keeps when it matches colours: k times the
images are generated and those nearest unlabelled crops of the training slides are kept
(``ops.gan.appearance_match``); the unmatched set is the pool's first images, so both see the same seeds.

The stand-in's class shares of the samples are printed beside it as a diagnostic only; they take no part in the
choice.

Last line: ``psi_best=<x> swd_ratio_best=<x> swd_ratio_<psi>=<x> ... background_<psi>=<x> ...
background_real=<x>``.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from downstream import home_ref  # noqa: E402 - bench/ is on sys.path when a script runs

from ops.gan.appearance_match import colour_histograms, match_to_reference, reference_histograms  # noqa: E402
from ops.gan.metrics import swd_against  # noqa: E402
from ops.gan.sampling import generate  # noqa: E402
from ops.gan.trainer import load_generator  # noqa: E402
from ops.labelling.class_maps import get_class_map  # noqa: E402
from ops.labelling.demo_annotator import class_shares, demo_labels  # noqa: E402
from ops.slides.crops import TileCropSampler  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--home", type=Path, default=Path(os.environ.get("HISTOFACTORY_HOME", "data")))
    parser.add_argument("--psi", type=float, nargs="+", default=[0.5, 0.7, 0.85, 1.0], help="truncation values")
    parser.add_argument("--images", type=int, default=256, help="images per set (samples, reference, floor)")
    parser.add_argument("--repeats", type=int, default=5, help="independent draws of all three sets; psi by the mean")
    parser.add_argument("--match-pool", type=int, default=0, help="also judge colour-matched samples from k x images")
    args = parser.parse_args()
    if args.match_pool < 0:
        raise SystemExit(f"--match-pool {args.match_pool}: expected 0 (off) or a pool multiple >= 1")
    if args.repeats < 1 or args.images < 2:
        raise SystemExit(f"--repeats {args.repeats} --images {args.images}: need at least 1 draw of 2 images")
    if any(not 0 < p <= 1 for p in args.psi):
        raise SystemExit(f"--psi {args.psi}: every value must lie in (0, 1] (1 = no truncation)")
    start = time.perf_counter()
    gan = home_ref(args.home, "gan_model")
    tiles = pd.read_parquet(home_ref(args.home, "training_tiles").path)
    holdout = tiles[tiles["split"] == "holdout"]
    if holdout.empty:
        raise SystemExit(f"{args.home}: the training tiles have no held-out part to compare samples with")
    G = load_generator(gan.path)
    names = list(get_class_map("demo").classes)
    variants = [(psi, False) for psi in args.psi] + [(psi, True) for psi in args.psi if args.match_pool]
    ratios: dict[tuple[float, bool], list[float]] = {v: [] for v in variants}
    shares: dict[tuple[float, bool], np.ndarray] = {}
    if args.match_pool:  # the crops the export and the GAN budget route match: training slides, not the held-out one
        reference = reference_histograms(tiles, G.cfg.resolution)
    pool = max(1, args.match_pool)
    for repeat in range(args.repeats):
        # Every repeat draws new reference, floor and sample sets: one draw's max-over-levels ratio is noisy.
        ref_a = TileCropSampler(holdout, G.cfg.resolution, seed=12345 + 1000 * repeat).batch_uint8(args.images)
        ref_b = TileCropSampler(holdout, G.cfg.resolution, seed=67890 + 1000 * repeat).batch_uint8(args.images)
        floor = swd_against(ref_a, ref_b).per_level
        # Not the export's seeds, not the GAN asset's evaluation seeds.
        seeds = np.arange(args.images * pool) + 20_000_000 + repeat * args.images * pool
        if repeat == 0:
            real_shares = class_shares(demo_labels(ref_a))
        for psi in args.psi:
            candidates = generate(G, seeds, psi, "cpu", batch=32)[2]
            sets = {False: candidates[: args.images]}
            if args.match_pool:
                sets[True] = candidates[
                    match_to_reference(colour_histograms(candidates), reference, args.images, repeat)
                ]
            for matched, images in sets.items():
                swd = swd_against(ref_a, images).per_level
                ratios[psi, matched].append(max(swd[k] / max(floor[k], 1e-12) for k in floor))
                if repeat == 0:
                    shares[psi, matched] = class_shares(demo_labels(images))
        print(f"draw {repeat}: " + ", ".join(f"{_name(*v)} {r[-1]:.2f}" for v, r in ratios.items()), flush=True)
    rows = [
        {"psi": _name(*v), "swd_ratio": float(np.mean(r)),
         "swd_ratio_sd": float(np.std(r, ddof=1)) if len(r) > 1 else np.nan, **dict(zip(names, shares[v], strict=True))}
        for v, r in ratios.items()
    ]  # fmt: skip
    table = pd.DataFrame(rows)
    real = {
        "psi": "held-out",
        "swd_ratio": np.nan,
        "swd_ratio_sd": np.nan,
        **dict(zip(names, real_shares, strict=True)),
    }
    real_row = pd.DataFrame([real])
    print(f"{gan.path}; {args.repeats} draws of {args.images} images per set; held-out crops of the training slides; "
          f"{time.perf_counter() - start:.0f} s")  # fmt: skip
    print("SWD / noise floor (max over levels; mean and sd over draws) and the stand-in's class shares of the first")
    print("draw (diagnostic; last row: held-out crops)")
    print(pd.concat([table, real_row]).to_string(index=False, float_format=lambda v: f"{v:.3f}"))
    best = table.loc[table["swd_ratio"].idxmin()]
    background = names[0]
    print(
        f"psi_best={best['psi']} swd_ratio_best={best['swd_ratio']:.3f} "
        + " ".join(f"swd_ratio_{r['psi']}={r['swd_ratio']:.3f}" for _, r in table.iterrows())
        + " "
        + " ".join(f"background_{r['psi']}={r[background]:.4f}" for _, r in table.iterrows())
        + f" background_real={real_shares[0]:.4f}"
    )


def _name(psi: float, matched: bool) -> str:
    """A variant's name in the table and the last line: ``0.7`` or ``0.7_matched``."""
    return f"{psi:g}_matched" if matched else f"{psi:g}"


if __name__ == "__main__":
    main()
