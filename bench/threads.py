"""Torch CPU threads on shared cores: which ``TorchDevice.threads`` default degrades gracefully?

    python bench/threads.py [--quick] [--rounds 2] [--gan-steps 24] [--ldm-steps 40]

Two training loops the demo runs, as the pipeline runs them, from random weights (weights do not change the speed):
the GAN fine-tune (``GanTrainer.train_step``, demo preset, batch 16, 64 px) and the LDM (``LdmTrainer.train_step``,
demo preset, concat conditioning, batch 32 on 4x16x16 latents). Every measurement is a fresh child process
(``bench/child_process.py``) that sets ``torch.set_num_threads``, runs one untimed warm-up step and times a fixed
number of steps.

1. Each loop with 1 and with 2 threads, alone and beside one busy process (a pure-Python spin loop that holds one
   core, as another engineer's test run or a second training would). Contenders are interleaved round by round so
   that load changes on a shared machine hit all alike; the median over rounds is reported.
2. Both trainings of the demo (GAN route and LDM route are independent): one after the other with 2 threads each
   (today's in-process run), one after the other with 1 thread each, and both at once as two processes with one
   thread each; wall time to finish both.

Timings are wall-clock on whatever else the machine runs: the load average before and after is printed; compare
ratios within one run. ``--quick``: one round, fewer steps (about 4 min on 2 quiet cores).

Last line: ``gan_t1=<steps/s> gan_t2=<x> gan_t1_busy=<x> gan_t2_busy=<x> ldm_t1=<x> ldm_t2=<x> ldm_t1_busy=<x>
ldm_t2_busy=<x> busy_slowdown_t1=<x> busy_slowdown_t2=<x> both_sequential_t2_s=<x> both_sequential_t1_s=<x>
both_parallel_t1_s=<x> load_before=<x> load_after=<x>`` (``busy_slowdown_tN``: mean over both loops of alone /
busy steps/s with N threads; 1.0 = unaffected by the neighbour).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from child_process import run_child  # noqa: E402 - bench/ is on sys.path when a script runs

SCRIPT = str(Path(__file__).resolve())
BUSY = "while True:\n    pass\n"


def child(spec: dict) -> dict:
    """Build the trainer, warm up, time ``spec['steps']`` steps with ``spec['threads']`` threads."""
    import torch

    torch.set_num_threads(spec["threads"])
    torch.manual_seed(0)
    if spec["workload"] == "gan":
        from ops.gan.networks import get_gan_config
        from ops.gan.trainer import GanTrainer, TrainConfig

        cfg = get_gan_config("demo")
        trainer = GanTrainer(cfg, TrainConfig(batch_size=16), torch.device("cpu"))
        reals = torch.rand(16, 3, cfg.resolution, cfg.resolution) * 2 - 1

        def step() -> None:
            trainer.train_step(reals)

    else:
        from ops.diffusion.denoiser import LdmTrainConfig, LdmTrainer, get_ldm_config
        from ops.labelling.demo_annotator import DEMO_CLASS_MAP

        cfg = get_ldm_config("demo", DEMO_CLASS_MAP.n_classes, conditioning="concat")
        trainer = LdmTrainer(cfg, LdmTrainConfig(batch_size=32, seed=0))
        z0 = torch.randn(32, cfg.latent_channels, cfg.latent_size, cfg.latent_size)
        masks = torch.randint(0, DEMO_CLASS_MAP.n_classes, (32, cfg.resolution, cfg.resolution))

        def step() -> None:
            trainer.train_step(z0, masks)

    step()  # warm-up: allocator, lazy R1 of step 0, first EMA
    start = time.perf_counter()
    for _ in range(spec["steps"]):
        step()
    seconds = time.perf_counter() - start
    return {"seconds": seconds, "steps_per_s": spec["steps"] / seconds}


def measure(workload: str, threads: int, steps: int, busy: bool) -> float:
    """Steps/s of one child, with a spinning neighbour process when ``busy``."""
    neighbour = subprocess.Popen([sys.executable, "-c", BUSY]) if busy else None
    try:
        spec = {"workload": workload, "threads": threads, "steps": steps}
        return run_child(SCRIPT, spec, f"{workload} t{threads}{' busy' if busy else ''}")["steps_per_s"]
    finally:
        if neighbour is not None:
            neighbour.kill()
            neighbour.wait()


def both_trainings(steps: dict[str, int], threads: int, parallel: bool) -> float:
    """Wall seconds until the GAN and the LDM loop both finished ``steps`` steps (sequential or as two processes)."""
    specs = [{"workload": w, "threads": threads, "steps": n} for w, n in steps.items()]
    start = time.perf_counter()
    if parallel:
        procs = [
            subprocess.Popen([sys.executable, SCRIPT, "--child", json.dumps(s)], stdout=subprocess.DEVNULL)
            for s in specs
        ]
        codes = [p.wait() for p in procs]
        if any(codes):
            raise RuntimeError(f"parallel children failed with exit codes {codes}")
    else:
        for s in specs:
            run_child(SCRIPT, s, f"{s['workload']} t{threads} sequential")
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="one round, fewer steps")
    parser.add_argument("--rounds", type=int, default=2, help="interleaved rounds (median reported)")
    parser.add_argument("--gan-steps", type=int, default=24, help="timed GAN steps per measurement")
    parser.add_argument("--ldm-steps", type=int, default=40, help="timed LDM steps per measurement")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(json.loads(args.child))))
        return
    rounds = 1 if args.quick else args.rounds
    steps = {"gan": 12, "ldm": 20} if args.quick else {"gan": args.gan_steps, "ldm": args.ldm_steps}
    load_before = os.getloadavg()[0]
    print(f"cores={os.cpu_count()} load_before={load_before:.2f} steps={steps} rounds={rounds}", flush=True)

    contenders = [(w, t, busy) for w in steps for busy in (False, True) for t in (1, 2)]
    rates: dict[tuple[str, int, bool], list[float]] = {c: [] for c in contenders}
    walls: dict[str, list[float]] = {"sequential_t2": [], "sequential_t1": [], "parallel_t1": []}
    for r in range(rounds):
        for w, t, busy in contenders:
            rates[(w, t, busy)].append(measure(w, t, steps[w], busy))
            print(f"round {r}: {w} threads={t} busy={busy}: {rates[(w, t, busy)][-1]:.3f} steps/s", flush=True)
        for name, threads, parallel in (
            ("sequential_t2", 2, False),
            ("sequential_t1", 1, False),
            ("parallel_t1", 1, True),
        ):
            walls[name].append(both_trainings(steps, threads, parallel))
            print(f"round {r}: both trainings {name}: {walls[name][-1]:.1f} s", flush=True)

    rate = {c: statistics.median(v) for c, v in rates.items()}
    wall = {k: statistics.median(v) for k, v in walls.items()}
    slowdown = {t: statistics.mean(rate[(w, t, False)] / rate[(w, t, True)] for w in steps) for t in (1, 2)}
    load_after = os.getloadavg()[0]
    print(
        " ".join(f"{w}_t{t}{'_busy' if busy else ''}={rate[(w, t, busy)]:.3f}" for w, t, busy in contenders)
        + f" busy_slowdown_t1={slowdown[1]:.2f} busy_slowdown_t2={slowdown[2]:.2f}"
        + f" both_sequential_t2_s={wall['sequential_t2']:.1f} both_sequential_t1_s={wall['sequential_t1']:.1f}"
        + f" both_parallel_t1_s={wall['parallel_t1']:.1f} load_before={load_before:.2f} load_after={load_after:.2f}"
    )


if __name__ == "__main__":
    main()
