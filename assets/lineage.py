"""Lineage metadata attached to every materialization: package versions and pictures for the UI."""

from __future__ import annotations

import base64
import hashlib
import json
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import dagster as dg

TRACKED_PACKAGES = (
    "histofactory",
    "torch",
    "openslide-python",
    "openslide-bin",
    "tifffile",
    "zarr",
    "dagster",
    "numpy",
    "scikit-image",
)


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


def content_hash(value: object) -> str:
    """16 hex digits of SHA-256 over canonical JSON: run keys and data versions that change exactly when the
    content does (key order and process do not matter)."""
    return hashlib.sha256(json.dumps(value, sort_keys=True, default=str).encode()).hexdigest()[:16]


def write_json_atomic(path: Path, value: dict) -> None:
    """Write a small JSON file (a run's ``state.json``) via a temp file and rename, so readers never see half of it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(value, indent=1))
    tmp.replace(path)


def tile_set_hash(tiles) -> str:
    """Version of a tile selection: which tiles of which slides, in which split (not their pixels, which the
    slide's content hash already pins)."""
    return content_hash(tiles[["slide_id", "x", "y", "split"]].to_dict("list"))
