"""Class map presets and class-name lookups."""

from __future__ import annotations
