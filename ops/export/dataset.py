"""Load a histofactory export in PyTorch.

    from ops.export.dataset import SyntheticSegmentationDataset, SyntheticTileClassDataset
    ds = SyntheticSegmentationDataset("data/export/<version>")
    loader = torch.utils.data.DataLoader(ds, batch_size=16, shuffle=True, num_workers=2)

``SyntheticSegmentationDataset`` yields ``(image float32 [3, H, W] in [0, 1], mask int64 [H, W])`` for the rows
that have a mask (routes ``stylegan2``, ``ldm``); GAN masks leave their most uncertain pixels at 255 (unlabelled:
``torch.nn.CrossEntropyLoss(ignore_index=255)``). ``SyntheticTileClassDataset`` yields ``(image, tile_class int64)``
for the rows that carry a tile class instead (route ``cgan_federated``: tiles generated for a class, no mask).
Both hold only the manifest (paths), so they pickle cheaply into worker processes.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from PIL import Image
from torch.utils.data import Dataset


def _manifest(root: Path, generator: str | None) -> tuple[Path, pd.DataFrame]:
    """The export's manifest, optionally only one generator's rows."""
    manifest = root / "manifest.parquet"
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
    return manifest, table


def _image(path: Path) -> torch.Tensor:
    image = np.asarray(Image.open(path).convert("RGB"))
    return torch.from_numpy(image.copy()).permute(2, 0, 1).float().div_(255.0)


class SyntheticSegmentationDataset(Dataset):
    """Image-mask pairs of one export version (its ``manifest.parquet``); rows without a mask are left out.

    Args:
        root: The export version folder (``$HISTOFACTORY_HOME/export/<version>``).
        max_uncertainty: Optionally keep only samples at or below this uncertainty score (GAN route only: LDM
            pairs have no uncertainty and are dropped by this filter).
        generator: Optionally keep only the pairs of one generator (``stylegan2`` or ``ldm``).
        transform: Optional callable ``(image, mask) -> (image, mask)`` applied to the tensors.

    Raises:
        ValueError: ``generator`` names a route whose rows have no masks (use ``SyntheticTileClassDataset``).
    """

    def __init__(
        self,
        root: str | os.PathLike[str],
        max_uncertainty: float | None = None,
        transform=None,
        generator: str | None = None,
    ) -> None:
        self.root = Path(root)
        manifest, table = _manifest(self.root, generator)
        table = table[table["mask"].notna()]
        if generator is not None and table.empty:
            raise ValueError(
                f"{manifest}: the {generator!r} rows have no masks (tiles with a class); load them with "
                "SyntheticTileClassDataset"
            )
        if max_uncertainty is not None:
            table = table[table["uncertainty"] <= max_uncertainty]
        self.images = table["image"].tolist()
        self.masks = table["mask"].tolist()
        self.sample_ids = table["sample_id"].tolist()
        self.transform = transform

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        x = _image(self.root / self.images[index])
        y = torch.from_numpy(np.asarray(Image.open(self.root / self.masks[index])).astype(np.int64))
        return self.transform(x, y) if self.transform else (x, y)


class SyntheticTileClassDataset(Dataset):
    """Generated tiles with the class they were generated for (manifest column ``tile_class``), for tile
    classifiers.

    Args:
        root: The export version folder.
        generator: Optionally one route (default: every row with a tile class, i.e. ``cgan_federated``).
        transform: Optional callable ``image -> image`` applied to the tensor.

    Raises:
        ValueError: the export (or the chosen route) has no rows with a tile class.
    """

    def __init__(self, root: str | os.PathLike[str], generator: str | None = None, transform=None) -> None:
        self.root = Path(root)
        manifest, table = _manifest(self.root, generator)
        if "tile_class" in table:
            table = table[table["tile_class"].notna()]
        if "tile_class" not in table or table.empty:
            raise ValueError(
                f"{manifest}: no rows with a tile_class; export the cgan_federated route (synthetic_dataset "
                "generators) or load image-mask pairs with SyntheticSegmentationDataset"
            )
        self.images = table["image"].tolist()
        self.labels = table["tile_class"].astype(np.int64).tolist()
        self.sample_ids = table["sample_id"].tolist()
        self.transform = transform

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        x = _image(self.root / self.images[index])
        return (self.transform(x) if self.transform else x), torch.tensor(self.labels[index], dtype=torch.int64)


def mask_routes(root: str | os.PathLike[str]) -> list[str]:
    """Routes of an export whose rows have masks (what a segmentation check can use)."""
    _, table = _manifest(Path(root), None)
    return sorted(table.loc[table["mask"].notna(), "generator"].unique())
