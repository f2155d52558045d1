"""Class maps (ordered class names with colours) and the error every annotation problem raises.

The base of the annotation modules (``png_masks``, ``geojson``, ``annotation_sets``): a mask is a ``uint8 [H, W]``
array of class ids whose meaning a :class:`ClassMap` gives, with ``IGNORE_INDEX`` (255) for pixels nobody labelled.
Every problem with a file raises :class:`AnnotationError` naming the file, what was expected, what was found and how
to fix it, because these files come from people, and the fix is usually on their side (wrong export resolution, a
typo in a class name).
"""

from __future__ import annotations

import difflib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

IGNORE_INDEX = 255  # label value for unannotated pixels when ``fill=IGNORE_INDEX``


class AnnotationError(ValueError):
    """An annotation file (or set) cannot be used; the message names the file, the problem and the fix."""


@dataclass(frozen=True)
class ClassMap:
    """Ordered class names (index = class id) with display colours (RGB, 0-255).

    Attributes:
        name: Preset name.
        classes: Class names; position is the class id written into masks.
        colours: One RGB triple per class (PNG palette, QuPath ``colorRGB``, overlays).
    """

    name: str
    classes: tuple[str, ...]
    colours: tuple[tuple[int, int, int], ...]

    def __post_init__(self) -> None:
        if len(self.classes) != len(self.colours):
            raise ValueError(f"class map {self.name!r}: {len(self.classes)} classes but {len(self.colours)} colours")
        if len(set(self.classes)) != len(self.classes):
            raise ValueError(f"class map {self.name!r}: duplicate class names {self.classes}")
        if not 1 <= len(self.classes) < IGNORE_INDEX:
            raise ValueError(f"class map {self.name!r}: expected 1..254 classes, received {len(self.classes)}")

    @property
    def n_classes(self) -> int:
        return len(self.classes)

    def palette(self) -> list[int]:
        """Flat 768-value PIL palette; unused entries black, ``IGNORE_INDEX`` grey."""
        pal = np.zeros((256, 3), np.uint8)
        pal[: self.n_classes] = self.colours
        pal[IGNORE_INDEX] = (128, 128, 128)
        return pal.ravel().tolist()

    def index(self, name: str) -> int:
        """Class id of ``name``; unknown names raise an error listing the known ones."""
        try:
            return self.classes.index(name)
        except ValueError:
            raise AnnotationError(unknown_class_message(name, self.classes)) from None


# Demo classes: what the rule-based stand-in annotator (ops/labelling/demo_annotator.py) draws on IHC tissue.
# Classes 1/2 and 4/5 have the same colours in the image; only context (distance to a nuclear edge, nuclear density
# around) tells them apart, so a classifier must use generator features, not a pixel's RGB, to learn them.
CLASS_MAPS: dict[str, ClassMap] = {
    "demo": ClassMap(
        "demo",
        ("background", "nucleus interior", "nucleus border", "dab-positive region", "stroma", "cellular stroma"),
        ((245, 245, 245), (30, 30, 200), (110, 200, 255), (150, 75, 0), (255, 185, 200), (200, 0, 120)),
    ),
    "paper": ClassMap(  # HDGAN kidney classes
        "paper",
        ("whitespace", "cortical tubulointerstitium", "glomerulus", "arteriole", "artery"),
        ((255, 255, 255), (230, 160, 170), (60, 160, 60), (240, 200, 30), (200, 30, 30)),
    ),
}


def get_class_map(name: str) -> ClassMap:
    """Class map preset by name; an unknown name raises an error listing the presets."""
    if name not in CLASS_MAPS:
        raise AnnotationError(f"unknown class map {name!r}; known class maps: {sorted(CLASS_MAPS)}")
    return CLASS_MAPS[name]


def unknown_class_message(name: str, known: Sequence[str], where: str = "") -> str:
    """An unknown-class error text with the nearest known name: class-name typos are the usual cause."""
    close = difflib.get_close_matches(name, known, n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    return (
        f"{where}unknown class {name!r}{hint}; known classes: {list(known)}. Fix: rename the class in the "
        f"annotation tool, or use the class map that lists it"
    )


def read_annotation_bytes(path: Path, what: str) -> bytes:
    """The bytes of an annotation file; a missing or blank file is an error naming it (both importers need this)."""
    if not path.is_file():
        raise AnnotationError(f"{path}: {what} file not found")
    raw = path.read_bytes()
    if not raw.strip():
        raise AnnotationError(f"{path}: file is empty (0 bytes of content); expected {what}. Fix: re-export it")
    return raw
