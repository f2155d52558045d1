"""Which torch device training and inference use (CUDA when present, CPU otherwise), and how many CPU threads."""

import dagster as dg
from pydantic import Field


class TorchDevice(dg.ConfigurableResource):
    """The torch device for heavy assets (never hard-wired ``.cuda()``).

    ``threads`` defaults to 1 because these machines share their cores: torch's intra-op threads meet at a barrier
    after every operator, so one thread descheduled by another process stalls the others. On a shared 2-core machine
    ``bench/threads.py`` measured one thread faster than two for both demo training loops (README, "CPU threads").
    """

    preference: str = Field(default="auto", description="auto (cuda if available, else cpu), cpu, cuda or cuda:N.")
    threads: int | None = Field(
        default=1,
        ge=1,
        description="torch CPU threads of a run (torch.set_num_threads). 1 degrades gracefully on shared cores; "
        "raise it on a machine whose cores the run has to itself; null = torch's default (one per core).",
    )

    def device(self):
        import torch

        from ops.common.device import pick_device

        if self.threads:
            torch.set_num_threads(self.threads)
        return pick_device(self.preference)
