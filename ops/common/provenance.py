"""Provenance of trained weights: a JSON file beside each checkpoint or shipped model file.

Shipped weights are only reusable when one can say how they were made: which command and config, how many images
they saw, how long it took and on what machine. Training writes ``<file>.json`` beside its checkpoint as it goes;
exporting a shipping copy carries that record over and adds the export itself.
"""

from __future__ import annotations

import json
import os
import platform
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch


def provenance_path(model_file: str | os.PathLike[str]) -> Path:
    """``checkpoint.pt`` -> ``checkpoint.json``: where a model file's provenance lives."""
    return Path(model_file).with_suffix(".json")


def machine() -> dict[str, Any]:
    """What ran the training: OS, CPU count, torch version and threads, and the accelerator if any."""
    info: dict[str, Any] = {
        "platform": platform.platform(),
        "python": platform.python_version(),
        "cpu_count": os.cpu_count(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
    }
    if torch.cuda.is_available():
        info["cuda_device"] = torch.cuda.get_device_name(0)
    return info


def read_provenance(model_file: str | os.PathLike[str]) -> dict[str, Any]:
    """The provenance beside ``model_file``; empty when there is none. A damaged file is an error naming it."""
    path = provenance_path(model_file)
    if not path.is_file():
        return {}
    try:
        value = json.loads(path.read_text())
    except ValueError as err:
        raise ValueError(f"provenance file {path} is not valid JSON ({err}); delete it or restore it") from err
    if not isinstance(value, dict):
        raise ValueError(f"provenance file {path}: expected a JSON object, found {type(value).__name__}; delete it")
    return value


def write_provenance(model_file: str | os.PathLike[str], fields: Mapping[str, Any]) -> Path:
    """Write ``fields`` plus the machine and the time as ``<model_file>.json``, via a temp file and rename."""
    path = provenance_path(model_file)
    path.parent.mkdir(parents=True, exist_ok=True)
    record = {**fields, "machine": machine(), "written_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(json.dumps(record, indent=1, default=str))
    os.replace(tmp, path)
    return path
