"""The ``histofactory`` command line: the one-command demo and slide registration without the daemon.

Dagster storage: ``$DAGSTER_HOME`` when set, else ``$HISTOFACTORY_HOME/dagster`` (created on first use), so runs
started here show up in ``dagster dev`` pointed at the same folder.
"""

from __future__ import annotations

import argparse
import os
import shutil
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
    """Copy slides into the inbox (atomically) and register their partitions."""
    inbox = _home() / "slides"
    inbox.mkdir(parents=True, exist_ok=True)
    for src in map(Path, args.paths):
        if not src.is_file():
            print(f"error: {src}: no such file", file=sys.stderr)
            return 2
        dst = inbox / src.name
        if dst.exists() and os.path.samefile(src, dst):
            continue
        fd, tmp = tempfile.mkstemp(prefix=f".{src.name}.", suffix=".tmp", dir=inbox)
        os.close(fd)
        shutil.copyfile(src, tmp)
        os.replace(tmp, dst)
        print(f"copied {src} -> {dst}")
    sync_slides(get_instance())
    return 0


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


def _materialize(instance, job_name: str, keys: Sequence[str], label: str) -> dict[str, bool]:
    """Run a partitioned job once per key in the persistent instance, with a progress bar."""
    from tqdm import tqdm

    from pipelines.definitions import defs

    job = defs.resolve_job_def(job_name)
    ok: dict[str, bool] = {}
    with tqdm(keys, desc=label, unit="slide") as bar:
        for key in bar:
            bar.set_postfix_str(key)
            result = job.execute_in_process(partition_key=key, instance=instance, raise_on_error=False,
                                            run_config=QUIET_RUN)
            ok[key] = result.success
            if not result.success:
                for event in result.all_events:
                    if event.is_failure and event.step_failure_data:
                        bar.write(f"  {key}: FAILED - {event.step_failure_data.error.message.strip()[:500]}")
    return ok


def cmd_demo(args: argparse.Namespace) -> int:
    """Generate demo slides if the inbox is empty, then tile and filter every slide partition."""
    import pandas as pd
    from tqdm import tqdm

    from ops.demo_slides import DEMO_SLIDES, write_demo_slide
    from ops.slide_registry import is_slide_file

    home = _home()
    inbox = home / "slides"
    inbox.mkdir(parents=True, exist_ok=True)
    stages: list[tuple[str, float]] = []
    start = time.perf_counter()
    if not any(is_slide_file(p) for p in inbox.iterdir()):
        specs = DEMO_SLIDES[: args.slides] if args.slides else DEMO_SLIDES
        for spec in tqdm(specs, desc="demo slides", unit="slide"):
            write_demo_slide(spec, inbox)
        stages.append(("demo slides", time.perf_counter() - start))
    instance = get_instance()
    keys = sync_slides(instance)
    t = time.perf_counter()
    ok = _materialize(instance, "tiling", keys, "tiling + filtering")
    stages.append(("tiling + filtering", time.perf_counter() - t))

    rows = []
    for key in keys:
        table = home / "tiling" / key / "tiles" / "tiles.parquet"
        kept = len(pd.read_parquet(table)) if ok[key] and table.exists() else 0
        rows.append({"slide": key, "status": "ok" if ok[key] else "FAILED", "kept_tiles": kept})
    print("\n" + pd.DataFrame(rows).to_string(index=False))
    print("\nstage times: " + ", ".join(f"{name} {sec:.1f}s" for name, sec in stages)
          + f", total {time.perf_counter() - start:.1f}s")
    print(f"\noutputs:        {home}/tiling/<slide>/tiles/ (tiles.zarr, tiles.parquet, thumbnail.png)")
    print(f"Dagster UI:     DAGSTER_HOME={os.environ['DAGSTER_HOME']} dagster dev -m pipelines   "
          "(then open http://127.0.0.1:3000)")
    return 0 if all(ok.values()) else 1


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="histofactory",
        description="Labeled synthetic histopathology datasets from whole-slide images, orchestrated by Dagster. "
        "Data lives under $HISTOFACTORY_HOME (default ./data).",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    demo = sub.add_parser("demo", help="run the main job end to end on demo slides",
                          description="Generate demo slides when the inbox is empty, register them, and tile and "
                          "filter every slide partition in the persistent Dagster instance.")
    demo.add_argument("--slides", type=int, default=None, help="generate only the first N demo slides")
    demo.set_defaults(func=cmd_demo)

    slides = sub.add_parser("slides", help="register and list slides",
                            description="Manage the slide inbox ($HISTOFACTORY_HOME/slides).")
    slides_sub = slides.add_subparsers(dest="slides_command", required=True)
    add = slides_sub.add_parser("add", help="copy slides into the inbox and register their partitions",
                                description="Copy slide files into the inbox and add one `slides` partition each, "
                                "so `dagster asset materialize --partition KEY` works without the daemon.")
    add.add_argument("paths", nargs="+", help="slide files (.svs, .tiff, .ndpi, .mrxs, ...)")
    add.set_defaults(func=cmd_slides_add)
    lst = slides_sub.add_parser("list", help="print one partition key per line",
                                description="Print the registered slide partition keys, one per line.")
    lst.add_argument("--sync", action="store_true", help="scan the inbox and update the partitions first")
    lst.set_defaults(func=cmd_slides_list)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
