"""Which torch device training and inference use: CUDA when present, CPU otherwise."""

import dagster as dg
from pydantic import Field


class TorchDevice(dg.ConfigurableResource):
    """The torch device for heavy assets (never hard-wired ``.cuda()``)."""

    preference: str = Field(default="auto", description="auto (cuda if available, else cpu), cpu, cuda or cuda:N.")
    threads: int | None = Field(default=None, description="torch CPU threads; unset = torch's default.")

    def device(self):
        import torch

        from ops.common.device import pick_device

        if self.threads:
            torch.set_num_threads(self.threads)
        return pick_device(self.preference)
