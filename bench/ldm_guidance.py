"""LDM export sampler settings by label fidelity: classifier-free guidance and DDIM steps, chosen on validation seeds.

    HISTOFACTORY_HOME=<demo home> python bench/ldm_guidance.py [--home DIR] [--guidance 1 2 4 6 8]
                                                              [--steps 20 50] [--pairs 64] [--threads 1]

The export's LDM pairs are sampled with one guidance scale and one number of DDIM steps (demo preset: 4 and 20,
chosen from ``bench/ldm.py --parts disc``, which never tried a scale above 4). This bench measures the grid on the
LDM, autoencoder and mask bank a finished ``histofactory demo`` left under the home, the objects the export samples
from, so its numbers read on the export's scale:

- validation: ``--pairs`` masks drawn from the bank by seeds ``2_000_000_000 + i``, each setting sampled from the
  same seeds (same masks, same starting noise); fidelity = the export's stand-in score
  (``ops.export.label_scores.fidelity`` with the demo annotator: per-pair Dice, mean over classes present).
- the setting with the best validation fidelity is then scored once on ``--pairs`` other seeds
  (``3_000_000_000 + i``), beside the demo preset's setting on the same seeds: ``fidelity_test_best`` and
  ``fidelity_test_preset`` are the unselected estimate and its baseline.

The export draws its seeds from ``1_000_000 + batch * batch_size + i``, disjoint from both sets. Seconds per pair
include decoding and are wall-clock on whatever else the machine runs (compare within a run).

Last line: ``preset_guidance=<g> preset_steps=<s> best_guidance=<g> best_steps=<s> fidelity_val_preset=<x>
fidelity_val_best=<x> fidelity_test_preset=<x> fidelity_test_best=<x> ratio_test=<best/preset>
s_per_pair_preset=<x> s_per_pair_best=<x>``.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from downstream import home_ref  # noqa: E402 - bench/ is on sys.path when a script runs

from ops.diffusion.autoencoder import load_autoencoder  # noqa: E402
from ops.diffusion.denoiser import load_denoiser  # noqa: E402
from ops.diffusion.mask_bank import MaskBank  # noqa: E402
from ops.export.label_scores import fidelity  # noqa: E402
from ops.export.ldm_route import synthesize_ldm_pairs  # noqa: E402
from ops.labelling.demo_annotator import DEMO_CLASS_MAP, demo_labels  # noqa: E402

VALIDATION_SEEDS = 2_000_000_000
TEST_SEEDS = 3_000_000_000
PRESET = Path(__file__).resolve().parents[1] / "pipelines" / "presets" / "demo.yaml"


def _preset_setting() -> tuple[float, int]:
    export = yaml.safe_load(PRESET.read_text())["ops"]["synthetic_dataset"]["config"]
    return float(export["ldm_guidance"]), int(export["ldm_steps"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--home", default=os.environ.get("HISTOFACTORY_HOME", "data"), help="a finished demo's home")
    parser.add_argument("--guidance", type=float, nargs="+", default=[1.0, 2.0, 4.0, 6.0, 8.0])
    parser.add_argument("--steps", type=int, nargs="+", default=[20, 50])
    parser.add_argument("--pairs", type=int, default=64, help="pairs per setting and seed set")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    home = Path(args.home)
    ldm_file = home_ref(home, "ldm_model").path
    ae, _, scale = load_autoencoder(home_ref(home, "autoencoder").path)
    denoiser = load_denoiser(ldm_file)
    bank = MaskBank.load(home_ref(home, "mask_bank").path)
    n_classes = DEMO_CLASS_MAP.n_classes
    preset = _preset_setting()
    print(f"home {home}; LDM {ldm_file}; demo preset guidance {preset[0]}, {preset[1]} steps")

    def score(guidance: float, steps: int, base: int) -> tuple[float, float]:
        seeds = base + np.arange(args.pairs, dtype=np.int64)
        start = time.perf_counter()
        pairs = synthesize_ldm_pairs(denoiser, ae, scale, bank, seeds, steps=steps, guidance=guidance)
        seconds = (time.perf_counter() - start) / args.pairs
        return float(np.nanmean(fidelity(pairs.images, pairs.masks, demo_labels, n_classes)[0])), seconds

    grid = sorted({(g, s) for g in args.guidance for s in args.steps} | {preset}, key=lambda gs: (gs[1], gs[0]))
    val: dict[tuple[float, int], tuple[float, float]] = {}
    print(f"{'steps':>5} {'guidance':>8} {'fidelity (val)':>14} {'s/pair':>7}")
    for g, s in grid:
        val[(g, s)] = score(g, s, VALIDATION_SEEDS)
        print(f"{s:>5} {g:>8.1f} {val[(g, s)][0]:>14.3f} {val[(g, s)][1]:>7.2f}", flush=True)
    best = max(grid, key=lambda gs: val[gs][0])
    test_preset, test_best = score(*preset, TEST_SEEDS), score(*best, TEST_SEEDS)
    print(
        f"chosen on validation: guidance {best[0]}, {best[1]} steps; test seeds: preset {test_preset[0]:.3f}, "
        f"chosen {test_best[0]:.3f}"
    )
    print(
        f"preset_guidance={preset[0]:g} preset_steps={preset[1]} best_guidance={best[0]:g} best_steps={best[1]} "
        f"fidelity_val_preset={val[preset][0]:.3f} fidelity_val_best={val[best][0]:.3f} "
        f"fidelity_test_preset={test_preset[0]:.3f} fidelity_test_best={test_best[0]:.3f} "
        f"ratio_test={test_best[0] / test_preset[0]:.3f} s_per_pair_preset={test_preset[1]:.2f} "
        f"s_per_pair_best={test_best[1]:.2f}"
    )


if __name__ == "__main__":
    main()
