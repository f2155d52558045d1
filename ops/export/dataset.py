"""Load a histofactory export in PyTorch.

    from ops.export.dataset import SyntheticSegmentationDataset
    ds = SyntheticSegmentationDataset("data/export/<version>")
    loader = torch.utils.data.DataLoader(ds, batch_size=16, shuffle=True, num_workers=2)

Each item is ``(image float32 [3, H, W] in [0, 1], mask int64 [H, W])``. The dataset holds only the manifest
(paths), so it pickles cheaply into worker processes.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from PIL import Image
from torch.utils.data import Dataset


class SyntheticSegmentationDataset(Dataset):
    """Image-mask pairs of one export version (its ``manifest.parquet``).

    Args:
        root: The export version folder (``$HISTOFACTORY_HOME/export/<version>``).
        max_uncertainty: Optionally keep only samples at or below this uncertainty score (GAN route only: LDM
            pairs have no uncertainty and are dropped by this filter).
        generator: Optionally keep only the pairs of one generator (``stylegan2`` or ``ldm``).
        transform: Optional callable ``(image, mask) -> (image, mask)`` applied to the tensors.
    """

    def __init__(
        self,
        root: str | os.PathLike[str],
        max_uncertainty: float | None = None,
        transform=None,
        generator: str | None = None,
    ) -> None:
        self.root = Path(root)
        manifest = self.root / "manifest.parquet"
        if not manifest.exists():
            raise FileNotFoundError(
                f"{manifest}: not an export folder (no manifest). Point at $HISTOFACTORY_HOME/export/<version>."
            )
        table = pd.read_parquet(manifest)
        if generator is not None:
            found = sorted(table["generator"].unique()) if "generator" in table else ["stylegan2"]
            if generator not in found:
                raise ValueError(f"{manifest}: no pairs of generator {generator!r}; this export has {found}")
            table = table[table["generator"] == generator]
        if max_uncertainty is not None:
            table = table[table["uncertainty"] <= max_uncertainty]
        self.images = table["image"].tolist()
        self.masks = table["mask"].tolist()
        self.sample_ids = table["sample_id"].tolist()
        self.transform = transform

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        image = np.asarray(Image.open(self.root / self.images[index]).convert("RGB"))
        mask = np.asarray(Image.open(self.root / self.masks[index]))
        x = torch.from_numpy(image.copy()).permute(2, 0, 1).float().div_(255.0)
        y = torch.from_numpy(mask.astype(np.int64))
        return self.transform(x, y) if self.transform else (x, y)
