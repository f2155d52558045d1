"""A small kidney-class mask and QuPath-style features, shared by the annotation tests."""

from __future__ import annotations

import numpy as np

from ops.labelling.class_maps import CLASS_MAPS

PAPER = CLASS_MAPS["paper"]
SHAPE = (40, 50)


def kidney_mask() -> np.ndarray:
    m = np.zeros(SHAPE, np.uint8)
    m[5:30, 5:40] = 1
    m[10:20, 10:20] = 2  # glomerulus inside cortex
    m[32:38, 42:48] = 4
    return m


def qupath_feature(name: str, coordinates: list, kind: str = "Polygon", colour: int | None = -65536) -> dict:
    cls = {"name": name} if colour is None else {"name": name, "colorRGB": colour}
    return {
        "type": "Feature",
        "geometry": {"type": kind, "coordinates": coordinates},
        "properties": {"objectType": "annotation", "classification": cls},
    }


def rect(x0: float, y0: float, x1: float, y1: float) -> list[list[float]]:
    return [[x0, y0], [x1, y0], [x1, y1], [x0, y1], [x0, y0]]
