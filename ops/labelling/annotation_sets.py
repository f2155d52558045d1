"""Annotation sets: a folder of masks paired with the images they annotate, versioned by content, split for training.

A set mixes PNG and GeoJSON files (:func:`load_mask` picks the reader by suffix); files pair with images by stem;
the set's content hash is the data version that decides whether the classifier must retrain.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

import numpy as np

from ops.labelling.class_maps import AnnotationError, ClassMap
from ops.labelling.geojson import load_geojson_mask
from ops.labelling.png_masks import load_png_mask

MASK_SUFFIXES = (".png", ".geojson", ".json")


def load_mask(path: str | os.PathLike[str], shape: tuple[int, int], class_map: ClassMap, fill: int = 0) -> np.ndarray:
    """Load a PNG or GeoJSON mask by file suffix."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix == ".png":
        return load_png_mask(path, shape, class_map.n_classes, class_names=class_map.classes, colours=class_map.colours)
    if suffix in (".geojson", ".json"):
        return load_geojson_mask(path, shape, class_map.classes, fill=fill)
    raise AnnotationError(f"{path}: unsupported annotation file type {suffix!r}; expected one of {MASK_SUFFIXES}")


def match_annotations(files: Iterable[str | os.PathLike[str]], image_ids: Sequence[str]) -> dict[str, Path]:
    """Pair annotation files with images by file stem (``img_00003.png`` annotates image ``img_00003``).

    Raises:
        AnnotationError: A file for an image that does not exist, or two files for the same image.
    """
    known = set(image_ids)
    out: dict[str, Path] = {}
    for f in sorted(Path(p) for p in files):
        stem = f.name[: -len(f.suffix)] if f.suffix else f.name
        if stem not in known:
            examples = ", ".join(sorted(known)[:3]) + (", ..." if len(known) > 3 else "")
            raise AnnotationError(
                f"{f}: annotates image {stem!r}, which is not among the {len(known)} images ({examples}). Fix: name "
                f"the file after its image id, or remove annotations of images that were regenerated"
            )
        if stem in out:
            raise AnnotationError(f"{f}: image {stem!r} already annotated by {out[stem].name}; keep one file per image")
        out[stem] = f
    return out


def annotation_set_version(files: Iterable[str | os.PathLike[str]]) -> str:
    """Content hash of an annotation set: sha256 over sorted (file name, bytes); 16 hex chars.

    Names (not full paths) enter the hash so moving the folder keeps the version; a renamed or edited file
    changes it. Used as the data version that decides whether the classifier must retrain.
    """
    digest = hashlib.sha256()
    for f in sorted((Path(p) for p in files), key=lambda p: p.name):
        data = f.read_bytes()
        for part in (f.name.encode(), data):
            digest.update(len(part).to_bytes(8, "little"))
            digest.update(part)
    return digest.hexdigest()[:16]


def split_indices(
    n: int, n_train: int, n_val: int, n_test: int, seed: int = 0
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Random disjoint train / validation / test indices out of ``range(n)`` (HDGAN: 16 / 4 / 16).

    Returns:
        Three sorted int64 arrays.

    Raises:
        AnnotationError: Negative counts or more requested than available.
    """
    counts: Mapping[str, int] = {"n_train": n_train, "n_val": n_val, "n_test": n_test}
    for key, value in counts.items():
        if int(value) != value or value < 0:
            raise AnnotationError(f"{key} must be a non-negative integer, received {value!r}")
    if n_train < 1:
        raise AnnotationError("n_train must be >= 1: a classifier needs at least one annotated image")
    need = n_train + n_val + n_test
    if need > n:
        raise AnnotationError(
            f"split {n_train}/{n_val}/{n_test} (train/val/test) needs {need} annotated images, found {n}. Fix: "
            f"annotate {need - n} more images or lower the counts"
        )
    perm = np.random.default_rng(seed).permutation(n)
    parts = np.split(perm[:need], [n_train, n_train + n_val])
    return tuple(np.sort(p).astype(np.int64) for p in parts)  # type: ignore[return-value]
