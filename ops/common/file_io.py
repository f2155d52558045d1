"""Model files on disk: atomic writes, float16 shipping copies, and strict reads that name the file and the fix."""

from __future__ import annotations

import os
import pickle
import zipfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch


class CheckpointError(RuntimeError):
    """A checkpoint file cannot be used: missing, corrupt, truncated, or made for another configuration."""


def atomic_torch_save(payload: Any, path: str | os.PathLike[str]) -> Path:
    """``torch.save`` to a temp file in the same folder, then ``os.replace``: readers never see half a file, and an
    interrupted write leaves the previous checkpoint intact (what makes training resumable after ``kill -9``)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        torch.save(payload, tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def half_state(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A state dict with floating-point tensors in float16 (shipped weights: half the bytes; loading casts back)."""
    return {k: v.half() if v.is_floating_point() else v for k, v in state.items()}


def read_torch_file(
    path: str | os.PathLike[str],
    formats: Sequence[str],
    keys: Sequence[str],
    what: str,
    fix: str,
    missing_fix: str | None = None,
) -> dict[str, Any]:
    """Load a model file with ``torch.load(weights_only=True)`` onto the CPU and check its format tag and keys.

    Args:
        path: The file.
        formats: Accepted values of its ``format`` entry.
        keys: Entries it must have.
        what: How messages name it ("GAN checkpoint").
        fix: What the user should do about a bad file.
        missing_fix: What to do about a missing file (default: ``fix``).

    Raises:
        CheckpointError: missing, unreadable, corrupt or truncated, another kind of file, or lacking entries; the
            message names the file and the fix.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{what} {path} does not exist; {missing_fix or fix}")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except (RuntimeError, EOFError, OSError, ValueError, pickle.UnpicklingError, zipfile.BadZipFile) as err:
        raise CheckpointError(f"{what} {path} is corrupt or truncated ({type(err).__name__}: {err}); {fix}") from err
    found = payload.get("format") if isinstance(payload, dict) else type(payload).__name__
    if found not in formats:
        raise CheckpointError(
            f"{what} {path}: expected format {' or '.join(map(repr, formats))}, found {found!r}; {fix}"
        )
    missing = [k for k in keys if k not in payload]
    if missing:
        raise CheckpointError(f"{what} {path} lacks {missing}; {fix}")
    return payload
