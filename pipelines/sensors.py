"""Sensors: the slide inbox registers new slides as partitions and asks for their tiling."""

import dagster as dg

from assets.partitions import slide_partitions
from pipelines.jobs import tiling_job
from pipelines.slide_inbox import describe, reconcile_inbox
from resources import FactoryStorage


@dg.sensor(
    job=tiling_job,
    minimum_interval_seconds=30,
    default_status=dg.DefaultSensorStatus.RUNNING,
    description="Registers slides dropped in the inbox as partitions and tiles them.",
)
def slide_inbox_sensor(context: dg.SensorEvaluationContext, storage: FactoryStorage) -> dg.SensorResult:
    existing = context.instance.get_dynamic_partitions(slide_partitions.name)
    changes = reconcile_inbox(storage, existing)
    for level, message in describe(changes):
        getattr(context.log, level)(message)
    requests = []
    if changes.add_keys:
        requests.append(slide_partitions.build_add_request(changes.add_keys))
    if changes.remove_keys:
        requests.append(slide_partitions.build_delete_request(changes.remove_keys))
    return dg.SensorResult(
        run_requests=[dg.RunRequest(partition_key=k, run_key=f"tile-{k}") for k in changes.add_keys],
        dynamic_partitions_requests=requests,
    )
