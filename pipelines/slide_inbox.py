"""Reconciling the slide inbox with the registry and the ``slides`` dynamic partitions.

Shared by the inbox sensor and ``histofactory slides add|list`` so both register slides the same way.
"""

from __future__ import annotations

from dataclasses import dataclass

from ops.slides.registry import ScanResult
from ops.slides.validation import validate_slide
from resources import FactoryStorage


@dataclass(frozen=True)
class InboxChanges:
    """The scan plus the partition keys to add to and remove from the Dagster instance."""

    scan: ScanResult
    add_keys: list[str]
    remove_keys: list[str]


def reconcile_inbox(storage: FactoryStorage, existing_keys: list[str]) -> InboxChanges:
    """Scan the inbox (refusing files that cannot be tiled), save the registry, and work out partition changes."""
    registry = storage.registry()
    scan = registry.scan(storage.inbox, check=validate_slide)
    registry.save()
    existing = set(existing_keys)
    add_keys = sorted(k for k in registry.entries if k not in existing)
    remove_keys = sorted(k for k in existing if k not in registry.entries)
    return InboxChanges(scan, add_keys, remove_keys)


def describe(changes: InboxChanges) -> list[tuple[str, str]]:
    """Human-readable (level, message) lines for logs and the CLI."""
    scan = changes.scan
    lines = [("info", f"new slide {e.file} -> partition {e.key} ({e.slide_id})") for e in scan.added]
    lines += [("warning", f"{f}: same content as registered slide {k!r}; not added again") for f, k in scan.duplicates]
    lines += [("warning", f"{e.file} vanished from the inbox; partition {e.key} removed") for e in scan.removed]
    lines += [("warning", f"{name}: not a slide file (unknown extension); ignored") for name in scan.ignored]
    lines += [("warning", f"refused {name}, no partition added: {why}") for name, why in scan.refused]
    return lines
