"""Where parallel work runs: local dask schedulers, or a dask distributed cluster when an address is set."""

from typing import Literal

import dagster as dg
from pydantic import Field

from ops.tiling import ParallelSpec


class DaskResource(dg.ConfigurableResource):
    """Dask settings for the per-tile work (and later the export).

    Threads are the default: JPEG decoding and zarr encoding release the GIL, and nothing has to be pickled
    (``bench/tiling.py`` compares threads and processes on this machine).
    """

    workers: int = Field(default=2, description="Worker threads or processes for local schedulers.")
    scheduler: Literal["threads", "processes", "synchronous"] = Field(
        default="threads", description="Local dask scheduler (ignored when scheduler_address is set)."
    )
    scheduler_address: str | None = Field(
        default=None, description="dask distributed scheduler, e.g. tcp://10.0.0.5:8786; runs tasks on that cluster."
    )

    def spec(self) -> ParallelSpec:
        if self.workers < 1:
            raise ValueError(f"DaskResource.workers must be >= 1, received {self.workers}")
        return ParallelSpec(workers=self.workers, scheduler=self.scheduler, address=self.scheduler_address)
