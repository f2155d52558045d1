"""Configs that travel inside checkpoints: frozen dataclasses written as plain dicts and read back strictly."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any, Self


class DictConfig:
    """Mixin for frozen dataclass configs.

    ``to_dict`` gives the plain dict stored in checkpoints (loadable with ``weights_only=True``) and metadata;
    ``from_dict`` rebuilds the config and refuses unknown keys, because they mean the file was written by another
    code version, and silently dropping a setting would rebuild a different network.
    """

    def to_dict(self) -> dict[str, Any]:
        """Plain dict for checkpoints and metadata."""
        return dataclasses.asdict(self)  # type: ignore[call-overload]

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Self:
        """Rebuild from :meth:`to_dict`; unknown keys are an error naming them and the known ones."""
        known = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"{cls.__name__}.from_dict: unknown keys {unknown}; known keys are {sorted(known)}")
        return cls(**data)
