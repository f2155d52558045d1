"""Backfills without the daemon: lists of slides, ranges of export batches, and only what is stale.

``dagster asset materialize`` takes one partition and ``dagster job backfill`` only queues runs for the daemon; these
functions run the jobs in this process, one run per partition, in the persistent instance (so every run shows in the
UI), with a progress bar.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence

import dagster as dg

from assets.partitions import slide_partitions
from pipelines.jobs import DOWNSTREAM_ASSETS, EXPORT_ASSETS, FACTORY_ASSETS, TILING_ASSETS
from pipelines.staleness import staleness

RunJob = Callable[..., dict]


def parse_batches(spec: str) -> list[str]:
    """``"3"``, ``"0-9"`` or ``"0,2,5-7"`` -> export partition keys (``"000"`` ...)."""
    out: list[int] = []
    for part in spec.split(","):
        part = part.strip()
        if not part:
            continue
        lo, _, hi = part.partition("-")
        try:
            a, b = int(lo), int(hi or lo)
        except ValueError:
            raise ValueError(f"batch spec {spec!r}: expected numbers like 3, 0-9 or 0,2,5-7") from None
        if a > b or a < 0:
            raise ValueError(f"batch spec {spec!r}: bad range {part!r}")
        out.extend(range(a, b + 1))
    from assets.export import MAX_BATCHES

    bad = [b for b in out if b >= MAX_BATCHES]
    if bad:
        raise ValueError(f"batches {bad} exceed the {MAX_BATCHES} export partitions (0..{MAX_BATCHES - 1})")
    return [f"{b:03d}" for b in sorted(set(out))]


def stale_plan(instance: dg.DagsterInstance, repository: dg.RepositoryDefinition) -> dict[str, list]:
    """What a `stale` backfill would run: stale or missing slide partitions and factory assets, stale export
    batches (never-made batches are not 'stale'), and the downstream check when stale."""
    status = staleness(instance, repository)
    redo = {"stale", "missing"}
    slides = sorted(
        k
        for k in instance.get_dynamic_partitions(slide_partitions.name)
        if any(status(a, k) in redo for a in TILING_ASSETS)
    )
    factory = [a for a in FACTORY_ASSETS if status(a) in redo]
    from assets.export import export_batches

    batches = [b for b in export_batches.get_partition_keys() if status(EXPORT_ASSETS[0], b) == "stale"]
    downstream = [a for a in DOWNSTREAM_ASSETS if status(a) == "stale"]
    return {"slides": slides, "factory": factory, "export": batches, "downstream": downstream}


def run_stale(
    instance: dg.DagsterInstance,
    repository: dg.RepositoryDefinition,
    preset: str,
    run_job: RunJob,
    echo: Callable[[str], None] = print,
) -> dict[str, list]:
    """Re-materialize only what is stale, stage by stage (each stage's staleness is re-read after the last)."""
    plan = stale_plan(instance, repository)
    if plan["slides"]:
        run_job(instance, "tiling", plan["slides"], "stale slides")
        plan = stale_plan(instance, repository)
    if plan["factory"]:
        run_job(
            instance,
            f"factory_{preset}",
            [None],
            f"stale: {', '.join(plan['factory'])}",
            asset_selection=[dg.AssetKey(a) for a in plan["factory"]],
            processes=os.cpu_count() or 1,  # independent steps side by side, as in the demo
        )
        plan = stale_plan(instance, repository)
    if plan["export"]:
        from pipelines.presets import load_preset, ops_subset

        run_job(
            instance, "export", plan["export"], "stale export batches", ops_subset(load_preset(preset), EXPORT_ASSETS)
        )
        plan = stale_plan(instance, repository)
    if plan["downstream"]:
        run_job(instance, f"downstream_{preset}", [None], "stale downstream check")
        plan = stale_plan(instance, repository)  # what is left: the caller's exit status reads it
    return plan


def describe_plan(plan: dict[str, Sequence]) -> str:
    parts = [f"{name}: {', '.join(map(str, items))}" for name, items in plan.items() if items]
    return "; ".join(parts) if parts else "nothing is stale"
