"""Truncation psi of the demo GAN, judged without labels: SWD to held-out tiles per psi, on a finished demo's data.

    HISTOFACTORY_HOME=<demo home> python bench/gan_psi.py [--psi 0.5 0.7 0.85 1.0] [--images 256]

Why: truncation (StyleGAN's psi < 1) pulls every sample towards the average tile. HDGAN generated the images its
pathologist annotated at psi 0.7, and the export and the equal-budget GAN route synthesise at the same psi. On the
demo, psi 0.7 samples hold almost no background (stand-in labels: 0.7 % of pixels vs 7.6 % in the training crops),
and the GAN route's pretraining arm lowers Dice at the largest budget. Which psi to synthesise with should be
chosen without the labels the curve is scored on: this bench measures, for each psi, how far the samples' patch
statistics are from held-out crops of the training slides (the SWD the ``gan_model`` asset reports, as a ratio to
the held-out A-vs-B noise floor, max over pyramid levels), and picks the psi with the lowest ratio.

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

from ops.gan.metrics import swd_against  # noqa: E402
from ops.gan.sampling import generate  # noqa: E402
from ops.gan.trainer import load_generator  # noqa: E402
from ops.labelling.class_maps import get_class_map  # noqa: E402
from ops.labelling.demo_annotator import class_shares, demo_labels  # noqa: E402
from ops.slides.crops import TileCropSampler  # noqa: E402
from resources.references import read_reference  # noqa: E402


def _ref(home: Path, asset: str):
    path = home / "refs" / asset / "_.json"
    if not path.exists():
        raise SystemExit(f"{path}: missing; run `HISTOFACTORY_HOME={home} histofactory demo` first")
    return read_reference(path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--home", type=Path, default=Path(os.environ.get("HISTOFACTORY_HOME", "data")))
    parser.add_argument("--psi", type=float, nargs="+", default=[0.5, 0.7, 0.85, 1.0], help="truncation values")
    parser.add_argument("--images", type=int, default=256, help="images per set (samples, reference, floor)")
    args = parser.parse_args()
    if any(not 0 < p <= 1 for p in args.psi):
        raise SystemExit(f"--psi {args.psi}: every value must lie in (0, 1] (1 = no truncation)")
    start = time.perf_counter()
    gan = _ref(args.home, "gan_model")
    tiles = pd.read_parquet(_ref(args.home, "training_tiles").path)
    holdout = tiles[tiles["split"] == "holdout"]
    if holdout.empty:
        raise SystemExit(f"{args.home}: the training tiles have no held-out part to compare samples with")
    G = load_generator(gan.path)
    ref_a = TileCropSampler(holdout, G.cfg.resolution, seed=12345).batch_uint8(args.images)
    ref_b = TileCropSampler(holdout, G.cfg.resolution, seed=67890).batch_uint8(args.images)
    floor = swd_against(ref_a, ref_b).per_level
    names = list(get_class_map("demo").classes)
    real_shares = class_shares(demo_labels(ref_a))
    seeds = np.arange(args.images) + 20_000_000  # not the export's seeds, not the GAN asset's evaluation seeds
    rows = []
    for psi in args.psi:
        images = generate(G, seeds, psi, "cpu", batch=32)[2]
        swd = swd_against(ref_a, images).per_level
        ratio = max(swd[k] / max(floor[k], 1e-12) for k in floor)
        shares = class_shares(demo_labels(images))
        rows.append({"psi": psi, "swd_ratio": ratio, **dict(zip(names, shares, strict=True))})
        print(f"psi {psi}: SWD / floor {ratio:.2f}", flush=True)
    table = pd.DataFrame(rows)
    real_row = pd.DataFrame([{"psi": np.nan, "swd_ratio": np.nan, **dict(zip(names, real_shares, strict=True))}])
    print(f"{gan.path}; {args.images} images per set; held-out crops of the training slides; "
          f"{time.perf_counter() - start:.0f} s")  # fmt: skip
    print("SWD / noise floor (max over levels) and the stand-in's class shares (diagnostic; last row: held-out crops)")
    print(pd.concat([table, real_row]).to_string(index=False, float_format=lambda v: f"{v:.3f}"))
    best = table.loc[table["swd_ratio"].idxmin()]
    background = names[0]
    print(
        f"psi_best={best['psi']:g} swd_ratio_best={best['swd_ratio']:.3f} "
        + " ".join(f"swd_ratio_{r['psi']:g}={r['swd_ratio']:.3f}" for _, r in table.iterrows())
        + " "
        + " ".join(f"background_{r['psi']:g}={r[background]:.4f}" for _, r in table.iterrows())
        + f" background_real={real_shares[0]:.4f}"
    )


if __name__ == "__main__":
    main()
