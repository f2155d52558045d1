"""Scheduled retraining: weekly, re-materialize the factory chain only where upstream data or code changed."""

import dagster as dg

from pipelines.backfill import stale_plan
from pipelines.jobs import factory_jobs


@dg.schedule(
    cron_schedule="0 3 * * 0",
    job=factory_jobs["demo"],
    default_status=dg.DefaultScheduleStatus.STOPPED,
    description="Sundays 03:00: retrain the stale part of the GAN -> classifier chain (skips when fresh).",
)
def weekly_retraining(context: dg.ScheduleEvaluationContext):
    stale = stale_plan(context.instance, context.repository_def)["factory"]
    if not stale:
        return dg.SkipReason("nothing upstream changed since the last training; no run needed")
    return dg.RunRequest(
        asset_selection=[dg.AssetKey(a) for a in stale],
        tags={"histofactory/reason": "stale: " + ",".join(stale)},
    )
