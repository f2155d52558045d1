"""The ``histofactory`` command line: the one-command demo and slide registration without the daemon.

Dagster storage: ``$DAGSTER_HOME`` when set, else ``$HISTOFACTORY_HOME/dagster`` (created on first use), so runs
started here show up in ``dagster dev`` pointed at the same folder.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

# Keep Dagster's per-event console logging out of the progress bars; the UI has the full event log.
QUIET_RUN = {"loggers": {"console": {"config": {"log_level": "WARNING"}}}}

DAGSTER_YAML = """# Written by histofactory: local sqlite storage under this folder, no telemetry.
telemetry:
  enabled: false
nux:
  enabled: false
# INFO: a step process announces itself at DEBUG on the console before it reads the run's logger config; the
# structured events (step starts, materializations) are stored whatever this says.
python_logs:
  python_log_level: INFO
# Heavy training assets (gan_model, pixel_classifier, downstream_eval) share the pool "training": runs launched
# from the UI, schedules or sensors queue so that two of them never share one CPU/GPU budget.
concurrency:
  pools:
    default_limit: 1
    granularity: run
"""


def _home() -> Path:
    from resources import default_home

    home = default_home()
    home.mkdir(parents=True, exist_ok=True)
    return home


def get_instance():
    """The persistent Dagster instance the CLI uses (see module docstring)."""
    import dagster as dg

    if not os.environ.get("DAGSTER_HOME"):
        os.environ["DAGSTER_HOME"] = str(_home() / "dagster")
    dagster_home = Path(os.environ["DAGSTER_HOME"])
    dagster_home.mkdir(parents=True, exist_ok=True)
    if not (dagster_home / "dagster.yaml").exists():
        (dagster_home / "dagster.yaml").write_text(DAGSTER_YAML)
    return dg.DagsterInstance.get()


def sync_slides(instance, echo=print) -> list[str]:
    """Reconcile the inbox with the registry and the instance's ``slides`` partitions; returns all keys."""
    from assets.partitions import slide_partitions
    from pipelines.definitions import defs
    from pipelines.slide_inbox import describe, reconcile_inbox

    storage = defs.resources["storage"]
    name = slide_partitions.name
    changes = reconcile_inbox(storage, instance.get_dynamic_partitions(name))
    for _level, message in describe(changes):
        echo(message)
    if changes.add_keys:
        instance.add_dynamic_partitions(name, changes.add_keys)
    for key in changes.remove_keys:
        instance.delete_dynamic_partition(name, key)
    return sorted(instance.get_dynamic_partitions(name))


def cmd_slides_add(args: argparse.Namespace) -> int:
    """Check each slide (refusing files that cannot be tiled), copy the good ones into the inbox, register them.

    Exit status: 0 when every file was added, 1 when any was refused (the others are still added), 2 when a path
    does not exist (nothing is added).
    """
    from ops.slides.reader import SlideError
    from ops.slides.validation import validate_slide

    inbox = _home() / "slides"
    inbox.mkdir(parents=True, exist_ok=True)
    sources = list(map(Path, args.paths))
    for src in sources:
        if not src.is_file():
            print(f"error: {src}: no such file", file=sys.stderr)
            return 2
    refused = 0
    for src in sources:
        try:
            validate_slide(src)
        except SlideError as exc:
            print(f"refused: {exc}", file=sys.stderr)
            refused += 1
            continue
        dst = inbox / src.name
        if dst.exists() and os.path.samefile(src, dst):
            continue
        fd, tmp = tempfile.mkstemp(prefix=f".{src.name}.", suffix=".tmp", dir=inbox)
        os.close(fd)
        shutil.copyfile(src, tmp)
        os.replace(tmp, dst)
        print(f"copied {src} -> {dst}")
    sync_slides(get_instance())
    if refused:
        print(f"{refused} of {len(sources)} files refused; nothing of them was copied or registered.", file=sys.stderr)
    return 1 if refused else 0


def cmd_slides_list(args: argparse.Namespace) -> int:
    """Print one slide partition key per line (after syncing the inbox when asked)."""
    instance = get_instance()
    if args.sync:
        keys = sync_slides(instance, echo=lambda m: print(m, file=sys.stderr))
    else:
        from assets.partitions import slide_partitions

        keys = sorted(instance.get_dynamic_partitions(slide_partitions.name))
    for key in keys:
        print(key)
    return 0


def resolve_job(job_name: str):
    """A job of the code location by name: how each step process of a multiprocess run rebuilds the job."""
    from pipelines.definitions import defs

    return defs.resolve_job_def(job_name)


def _execute(instance, job_name: str, key: str | None, run_config: dict, asset_selection, processes: int):
    """One run of ``job_name``: in this process, or with independent steps side by side in ``processes`` processes.

    Side by side is what a run launched from the UI does (Dagster's multiprocess executor): on the demo the GAN
    chain and the LDM/GenSeg chain overlap, each step on one torch thread. The step processes fork from a server
    that has imported the code location once, so a small step does not pay for importing torch and Dagster again.
    """
    import dagster as dg

    if processes <= 1:
        return resolve_job(job_name).execute_in_process(
            partition_key=key, instance=instance, raise_on_error=False, run_config=run_config,
            asset_selection=asset_selection,
        )  # fmt: skip
    forkserver = {"forkserver": {"preload_modules": ["pipelines.definitions"]}}
    execution = {"config": {"multiprocess": {"max_concurrent": processes, "start_method": forkserver}}}
    return dg.execute_job(
        dg.build_reconstructable_job("pipelines.cli", "resolve_job", reconstructable_args=(job_name,)),
        instance,
        run_config={**run_config, "execution": execution},
        tags={"dagster/partition": key} if key is not None else None,
        raise_on_error=False,
        asset_selection=asset_selection,
    )


def _run_job(
    instance,
    job_name: str,
    keys: Sequence[str | None],
    label: str,
    run_config: dict | None = None,
    asset_selection: list | None = None,
    processes: int = 1,
) -> dict[str | None, bool]:
    """Run a job once per partition key (``None`` = unpartitioned) in the persistent instance, with progress."""
    from tqdm import tqdm

    from pipelines.run_outcome import Interrupted, failure_lines, was_interrupted

    ok: dict[str | None, bool] = {}
    with tqdm(keys, desc=label, unit="run") as bar:
        for key in bar:
            if key is not None:
                bar.set_postfix_str(key)
            config = {**(run_config or {}), **QUIET_RUN}
            try:
                result = _execute(instance, job_name, key, config, asset_selection, processes)
            except KeyboardInterrupt:  # a signal outside Dagster's step handling (start-up, shut-down)
                raise Interrupted(label, key, None, None) from None
            if was_interrupted(result):
                raise Interrupted(label, key, result.run_id, instance.get_run_by_id(result.run_id).status.value)
            ok[key] = result.success
            for line in failure_lines(result):
                bar.write(f"  {key or job_name}: {line}")
    return ok


def _write_demo_slides(inbox: Path, count: int | None) -> None:
    """Demo slides in parallel processes (the generator is single-threaded NumPy).

    A ``multiprocessing`` pool, not ``ProcessPoolExecutor``: on Ctrl-C or SIGTERM the parent leaves the ``with``
    block and the pool terminates its workers, whereas executor workers swallow the interrupt per task and keep
    writing slides for minutes. Each slide appears atomically, so a stopped run leaves no half-written slide.
    """
    import multiprocessing

    from tqdm import tqdm

    from ops.slides.demo_slides import DEMO_SLIDES

    specs = sorted(DEMO_SLIDES[:count] if count else DEMO_SLIDES, key=lambda s: -s.width)  # largest first
    workers = min(len(specs), os.cpu_count() or 1)
    with multiprocessing.Pool(workers, initializer=_leave_interrupts_to_the_parent) as pool:
        jobs = pool.imap_unordered(_write_demo_slide, [(spec, inbox) for spec in specs])
        for _ in tqdm(jobs, total=len(specs), desc="demo slides", unit="slide"):
            pass


def _leave_interrupts_to_the_parent() -> None:
    """Pool workers ignore Ctrl-C and exit on SIGTERM (what the pool's terminate sends), the parent decides; exiting
    by an exception lets the slide writer remove its temp file on the way out."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, _exit_now)


def _exit_now(signum: int, _frame: object) -> None:
    raise SystemExit(128 + signum)


def _write_demo_slide(job: tuple) -> Path:
    """``write_demo_slide(spec, out_dir)`` for the pool (a module-level function, so workers can look it up)."""
    from ops.slides.demo_slides import write_demo_slide

    return write_demo_slide(*job)


def _latest(instance, asset: str, key: str) -> object:
    import dagster as dg

    event = instance.get_latest_materialization_event(dg.AssetKey(asset))
    meta = event.asset_materialization.metadata if event else {}
    return meta[key].value if key in meta else None


def cmd_demo(args: argparse.Namespace) -> int:
    """The whole factory on demo slides: tiling, GAN, labelling, classifier, LDM, GenSeg, export, downstream check."""
    from ops.slides.registry import is_slide_file
    from pipelines.presets import load_preset, ops_subset

    home = _home()
    inbox = home / "slides"
    inbox.mkdir(parents=True, exist_ok=True)
    stages: list[tuple[str, float]] = []
    start = time.perf_counter()

    def stage(name: str, t0: float) -> None:
        stages.append((name, time.perf_counter() - t0))
        print(f"[{time.perf_counter() - start:6.1f}s] {name} done in {stages[-1][1]:.1f}s", flush=True)

    if not any(is_slide_file(p) for p in inbox.iterdir()):
        t = time.perf_counter()
        _write_demo_slides(inbox, args.slides)
        stage("demo slides", t)
    instance = get_instance()
    keys = sync_slides(instance)
    t = time.perf_counter()
    ok = _run_job(instance, "tiling", keys, "tiling + filtering")
    stage("tiling + filtering", t)
    failed = [k for k, good in ok.items() if not good]
    if failed:
        print(f"tiling failed for {failed}; the rest of the chain uses the other slides", file=sys.stderr)
    if args.tiling_only:
        return _summary(instance, home, stages, start, failed)

    preset = load_preset("demo")
    t = time.perf_counter()
    chain_ok = _run_job(
        instance, "factory_demo", [None], "GAN + labelling + classifier + LDM + GenSeg", processes=os.cpu_count() or 1
    )[None]
    stage("GAN, samples, annotations, features, classifier, LDM, GenSeg", t)
    if not chain_ok:
        return _summary(instance, home, stages, start, failed + ["factory_demo"])
    t = time.perf_counter()
    batches = [f"{i:03d}" for i in range(args.export_batches)]
    export_config = ops_subset(preset, ["synthetic_dataset"])
    export_ok = _run_job(instance, "export", batches, "synthetic export", export_config)
    stage("synthetic export", t)
    failed += [f"export {b}" for b, good in export_ok.items() if not good]
    t = time.perf_counter()
    if not _run_job(instance, "downstream_demo", [None], "downstream U-Net check")[None]:
        failed.append("downstream_demo")
    stage("downstream proof of value", t)
    return _summary(instance, home, stages, start, failed)


def _summary(instance, home: Path, stages: list[tuple[str, float]], start: float, failed: list[str]) -> int:
    """Print where everything is, the headline numbers and how to look at it."""
    rows = [("kept tiles (all slides)", sum(_latest_partitioned(instance, "tissue_tiles", "kept")))]
    headline = [
        ("GAN SWD / noise floor (max over levels)", "gan_model", "swd_floor_ratio"),
        ("untrained GAN SWD / noise floor", "gan_model", "untrained_floor_ratio"),
        ("classifier mean Dice (test split)", "classifier_eval", "mean_dice"),
        ("autoencoder PSNR dB (held-out crops)", "autoencoder", "psnr_db"),
        ("LDM mask agreement (x chance)", "ldm_model", "mask_agreement"),
        ("GenSeg mask agreement (x chance)", "genseg_model", "mask_agreement"),
        ("export version", "synthetic_dataset", "export_version"),
        ("export samples", "synthetic_dataset", "export_samples_total"),
        ("label fidelity, GAN pairs (stand-in Dice on labelled pixels)", "synthetic_dataset", "fidelity_stylegan2"),
        ("  the same on every pixel (unlabelled = miss)", "synthetic_dataset", "fidelity_all_pixels_stylegan2"),
        ("label fidelity, LDM pairs (stand-in Dice)", "synthetic_dataset", "fidelity_ldm"),
        ("label fidelity, GenSeg pairs (stand-in Dice)", "synthetic_dataset", "fidelity_genseg"),
        ("judge agreement, GAN pairs", "synthetic_dataset", "judge_agreement_stylegan2"),
        ("judge agreement, LDM pairs", "synthetic_dataset", "judge_agreement_ldm"),
        ("judge agreement, GenSeg pairs", "synthetic_dataset", "judge_agreement_genseg"),
        ("judge's own Dice (held-out real crops)", "label_judge", "judge_dice_held_out"),
        ("segmenter mean Dice, real only (smallest N)", "downstream_eval", "mean_dice_real"),
    ]
    for label, asset, key in headline:
        value = _latest(instance, asset, key)
        if value is not None:
            rows.append((label, round(value, 3) if isinstance(value, float) else value))
    print("\nheadline")
    for label, value in rows:
        print(f"  {label:<42} {value}")
    _print_gain(instance)
    print(
        "\nstage times: "
        + ", ".join(f"{name} {sec:.1f}s" for name, sec in stages)
        + f"; total {time.perf_counter() - start:.1f}s"
    )
    version = _latest(instance, "synthetic_dataset", "export_version")
    print(f"\nslide tiles:   {home}/tiling/<slide>/tiles/")
    if version:
        print(f"export:        {home}/export/{version}/ (manifest.parquet, dataset_card.md)")
    print(
        f"Dagster UI:    DAGSTER_HOME={os.environ['DAGSTER_HOME']} HISTOFACTORY_HOME={home} dagster dev -m pipelines"
        "  -> http://127.0.0.1:3000"
    )
    print(f"MLflow UI:     mlflow ui --backend-store-uri sqlite:///{home}/mlflow.db  -> http://127.0.0.1:5000")
    if failed:
        print(f"\nFAILED: {failed}", file=sys.stderr)
    return 1 if failed else 0


def _print_gain(instance) -> None:
    """The learning curve's headline: best synthetic arm minus real only at the smallest budget, with its CI."""
    gain = _latest(instance, "downstream_eval", "gain_smallest")
    if gain is None:
        return
    n, arm = (
        _latest(instance, "downstream_eval", "smallest_budget"),
        _latest(instance, "downstream_eval", "best_arm_smallest"),
    )
    low, high = (_latest(instance, "downstream_eval", k) for k in ("ci_low_smallest", "ci_high_smallest"))
    label = f"gain at N={n} ({arm} - real only)"
    print(f"  {label:<42} {gain:+.3f} (95% CI {low:+.3f} .. {high:+.3f})")
    if not _latest(instance, "downstream_eval", "per_budget_routes"):
        print(
            "  (exported pairs, labelled from every annotated tile: an upper bound at small N; the equal-label-budget\n"
            "   curve retrains each route per budget: downstream_eval per_budget, or python bench/downstream.py)"
        )
    if low is None or low <= 0:
        print(
            "  check synthetic_helps WARNS: no synthetic arm beats real only with its CI above 0\n"
            "  (label fidelity above says how far each route's masks are from their images)"
        )


def _latest_partitioned(instance, asset: str, key: str) -> list:
    import dagster as dg

    from assets.partitions import slide_partitions

    values = []
    for partition in instance.get_dynamic_partitions(slide_partitions.name):
        records = instance.fetch_materializations(
            dg.AssetRecordsFilter(asset_key=dg.AssetKey(asset), asset_partitions=[partition]), limit=1
        ).records
        if records:
            meta = records[0].asset_materialization.metadata
            values.append(meta[key].value if key in meta else 0)
    return values


def cmd_backfill(args: argparse.Namespace) -> int:
    """Slides, export batches, or only what is stale; one run per partition, no daemon needed."""
    from pipelines.backfill import describe_plan, parse_batches, run_stale, stale_plan
    from pipelines.definitions import defs
    from pipelines.presets import load_preset, ops_subset

    instance = get_instance()
    repository = defs.get_repository_def()
    if args.what == "slides":
        known = sync_slides(instance, echo=lambda m: print(m, file=sys.stderr))
        keys = known if args.all else args.keys
        unknown = sorted(set(keys) - set(known))
        if unknown or not keys:
            print(
                f"error: unknown slide partitions {unknown} (known: {known})"
                if unknown
                else "error: name slide partitions or pass --all",
                file=sys.stderr,
            )
            return 2
        ok = _run_job(instance, "tiling", keys, "tiling + filtering")
    elif args.what == "export":
        try:
            batches = parse_batches(args.batches)
        except ValueError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
        ok = _run_job(
            instance, "export", batches, "synthetic export", ops_subset(load_preset(args.preset), ["synthetic_dataset"])
        )
    else:
        if args.dry_run:
            print(describe_plan(stale_plan(instance, repository)))
            return 0
        before = stale_plan(instance, repository)
        print(f"stale: {describe_plan(before)}")
        left = run_stale(instance, repository, args.preset, _run_job)
        print(f"after: {describe_plan(left)}")
        return 0 if not any(left.values()) else 1
    failed = [k for k, good in ok.items() if not good]
    if failed:
        print(f"FAILED: {failed}", file=sys.stderr)
    return 1 if failed else 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="histofactory",
        description="Labeled synthetic histopathology datasets from whole-slide images, orchestrated by Dagster. "
        "Data lives under $HISTOFACTORY_HOME (default ./data).",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    demo = sub.add_parser(
        "demo",
        help="run the main job end to end on demo slides",
        description="Generate demo slides when the inbox is empty, register them, then run the "
        "whole factory (tiling, GAN fine-tuning, sampling, demo annotation, features, classifier, "
        "evaluation, synthetic export) as runs in the persistent Dagster instance.",
    )
    demo.add_argument("--slides", type=int, default=None, help="generate only the first N demo slides")
    demo.add_argument("--export-batches", type=int, default=2, help="export batches of 100 samples (default 2)")
    demo.add_argument("--tiling-only", action="store_true", help="stop after tiling and filtering")
    demo.set_defaults(func=cmd_demo)

    slides = sub.add_parser(
        "slides", help="register and list slides", description="Manage the slide inbox ($HISTOFACTORY_HOME/slides)."
    )
    slides_sub = slides.add_subparsers(dest="slides_command", required=True)
    add = slides_sub.add_parser(
        "add",
        help="copy slides into the inbox and register their partitions",
        description="Check each slide file (it opens, has a plausible pyramid, its thumbnail and a sample of "
        "full-resolution tiles decode), copy the good ones into the inbox and add one `slides` partition each, "
        "so `dagster asset materialize --partition KEY` works without the daemon. Refused files are named with "
        "the reason and the fix; the exit status is then 1.",
    )
    add.add_argument("paths", nargs="+", help="slide files (.svs, .tiff, .ndpi, .mrxs, ...)")
    add.set_defaults(func=cmd_slides_add)
    lst = slides_sub.add_parser(
        "list",
        help="print one partition key per line",
        description="Print the registered slide partition keys, one per line.",
    )
    lst.add_argument("--sync", action="store_true", help="scan the inbox and update the partitions first")
    lst.set_defaults(func=cmd_slides_list)

    backfill = sub.add_parser(
        "backfill",
        help="materialize many partitions, or only what is stale",
        description="Runs jobs in this process, one run per partition, in the persistent "
        "Dagster instance (no daemon needed).",
    )
    bsub = backfill.add_subparsers(dest="what", required=True)
    bs = bsub.add_parser(
        "slides",
        help="tile and filter slide partitions",
        description="Tile and filter the named slide partitions (or all of them).",
    )
    bs.add_argument("keys", nargs="*", help="slide partition keys (see `histofactory slides list`)")
    bs.add_argument("--all", action="store_true", help="every registered slide")
    bs.set_defaults(func=cmd_backfill)
    be = bsub.add_parser(
        "export",
        help="materialize export batches",
        description="Materialize synthetic-dataset batches, e.g. --batches 0-9 (1,000 samples).",
    )
    be.add_argument("--batches", required=True, help="3, 0-9 or 0,2,5-7")
    be.add_argument("--preset", default="demo", choices=["demo", "paper"], help="run preset (default demo)")
    be.set_defaults(func=cmd_backfill)
    bst = bsub.add_parser(
        "stale",
        help="re-run only what is stale",
        description="Re-materialize stale or missing slides and factory assets, and stale "
        "export batches, judged by Dagster code and data versions.",
    )
    bst.add_argument("--preset", default="demo", choices=["demo", "paper"], help="run preset (default demo)")
    bst.add_argument("--dry-run", action="store_true", help="only print what is stale")
    bst.set_defaults(func=cmd_backfill)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run a command; SIGTERM (a timeout, a container stop) ends it like Ctrl-C: the run in progress is recorded
    as failed, the stage is named, and the exit code is 130."""
    from pipelines.run_outcome import Interrupted

    args = build_parser().parse_args(argv)
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    try:
        return args.func(args)
    except Interrupted as stop:
        print(f"\n{stop}", file=sys.stderr)
    except KeyboardInterrupt:
        print("\ninterrupted outside a Dagster run (none was left running). Re-run the same command.", file=sys.stderr)
    return 130


if __name__ == "__main__":
    sys.exit(main())
