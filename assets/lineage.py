"""Lineage metadata attached to every materialization: package versions and pictures for the UI."""

from __future__ import annotations

import base64
from importlib.metadata import PackageNotFoundError, version

import dagster as dg

TRACKED_PACKAGES = ("histofactory", "torch", "openslide-python", "openslide-bin", "tifffile", "zarr", "dagster",
                    "numpy", "scikit-image")


def package_versions() -> dict[str, str]:
    """Versions of the packages whose behaviour shapes the outputs (recorded with each materialization)."""
    out = {}
    for name in TRACKED_PACKAGES:
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            out[name] = "not installed"
    return out


def png_markdown(png: bytes, alt: str) -> dg.MarkdownMetadataValue:
    """An inline picture the Dagster UI renders in the asset's metadata panel."""
    return dg.MetadataValue.md(f"![{alt}](data:image/png;base64,{base64.b64encode(png).decode()})")


def png_array(png: bytes):
    """Decode PNG bytes to an RGB array (``mlflow.log_image`` takes arrays, our pictures are PNG bytes)."""
    import io

    import numpy as np
    from PIL import Image

    return np.asarray(Image.open(io.BytesIO(png)).convert("RGB"))
