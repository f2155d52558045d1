"""Where parallel work runs: local dask schedulers, or a dask distributed cluster when an address is set."""

import os
from typing import Literal

import dagster as dg
from pydantic import Field

from ops.slides.tiling import ParallelSpec


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
        default=None,
        description="dask distributed scheduler, e.g. tcp://dask-scheduler:8786, where tasks run; unset = "
        "$HISTOFACTORY_DASK_SCHEDULER, else local.",
    )

    def spec(self) -> ParallelSpec:
        if self.workers < 1:
            raise ValueError(f"DaskResource.workers must be >= 1, received {self.workers}")
        address = self.scheduler_address or os.environ.get("HISTOFACTORY_DASK_SCHEDULER") or None
        return ParallelSpec(workers=self.workers, scheduler=self.scheduler, address=address)
