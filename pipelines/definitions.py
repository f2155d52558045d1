"""The code location: assembles assets, jobs, sensors and resources (nothing else lives here)."""

import dagster as dg

from assets.tiling import tile_grid, tissue_tiles
from pipelines.jobs import tiling_job
from pipelines.sensors import slide_inbox_sensor
from resources import DaskResource, FactoryStorage

defs = dg.Definitions(
    assets=[tile_grid, tissue_tiles],
    jobs=[tiling_job],
    sensors=[slide_inbox_sensor],
    resources={
        "storage": FactoryStorage(),
        "dask": DaskResource(),
    },
)
