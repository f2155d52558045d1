"""Writing model files safely: one place for the temp-file-then-rename dance and for float16 shipping copies."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch


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
