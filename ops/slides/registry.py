"""The slide registry: which inbox file is which partition, and which opaque id leaves the factory.

Partition keys are the sanitized file stem (stable across runs, readable in the UI and on the CLI). Every slide also
gets an opaque id from its content hash: exports name slides only by that id, and the id-to-file map stays in the
registry file inside the data root. A file whose content equals a registered slide is reported as a duplicate and
not registered twice; a registered file that vanished from the inbox is reported as removed.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import tempfile
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

# Extensions openslide (or our tifffile fallback) can read.
SLIDE_SUFFIXES = (
    ".svs",
    ".tif",
    ".tiff",
    ".ndpi",
    ".vms",
    ".vmu",
    ".scn",
    ".mrxs",
    ".svslide",
    ".bif",
    ".qptiff",
    ".dcm",
)


@dataclass(frozen=True)
class SlideEntry:
    """One registered slide."""

    key: str  # Dagster partition key
    file: str  # file name inside the inbox
    sha256: str
    slide_id: str  # opaque id derived from the content hash
    size: int
    mtime_ns: int


@dataclass
class ScanResult:
    """What one inbox scan found."""

    added: list[SlideEntry] = field(default_factory=list)
    removed: list[SlideEntry] = field(default_factory=list)
    duplicates: list[tuple[str, str]] = field(default_factory=list)  # (file, key of the slide it duplicates)
    ignored: list[str] = field(default_factory=list)  # files that are not slides
    refused: list[tuple[str, str]] = field(default_factory=list)  # (file, why) for files that failed the check


def sanitize_key(stem: str) -> str:
    """A partition key from a file stem: lower case, ``[a-z0-9_-]`` only, never empty."""
    key = re.sub(r"[^a-z0-9_-]+", "_", stem.lower()).strip("_-")
    return key or "slide"


def slide_stem(name: str) -> str:
    """File name without its slide extension (handles ``.ome.tiff``)."""
    lower = name.lower()
    for suffix in (".ome.tiff", ".ome.tif", *SLIDE_SUFFIXES):
        if lower.endswith(suffix):
            return name[: -len(suffix)]
    return Path(name).stem


def is_slide_file(path: Path) -> bool:
    """Slides are recognised by extension; hidden and temp files (our own copies in flight) are skipped."""
    return path.is_file() and not path.name.startswith(".") and path.name.lower().endswith(SLIDE_SUFFIXES)


def file_sha256(path: str | os.PathLike[str], chunk: int = 8 << 20) -> str:
    """Content hash, streamed so multi-GB slides never sit in memory."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def slide_id_for(sha256: str) -> str:
    """The opaque slide id used wherever data leaves the factory."""
    return f"sl-{sha256[:16]}"


class SlideRegistry:
    """A JSON file mapping partition keys to inbox files and content hashes."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self.entries: dict[str, SlideEntry] = {}
        # Files that failed the door check, by name: [size, mtime_ns, reason]; re-checked only when they change.
        self.refused: dict[str, list] = {}
        if self.path.exists():
            raw = json.loads(self.path.read_text())
            self.entries = {k: SlideEntry(**v) for k, v in raw.get("slides", {}).items()}
            self.refused = raw.get("refused", {})

    def save(self) -> None:
        """Write atomically (temp file + rename) so a crash never leaves a truncated registry."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        payload = {"slides": {k: asdict(v) for k, v in sorted(self.entries.items())}, "refused": self.refused}
        fd, tmp = tempfile.mkstemp(dir=self.path.parent, prefix=".registry-", suffix=".json")
        with os.fdopen(fd, "w") as f:
            json.dump(payload, f, indent=1)
        os.replace(tmp, self.path)

    def by_file(self) -> dict[str, SlideEntry]:
        return {e.file: e for e in self.entries.values()}

    def by_hash(self) -> dict[str, SlideEntry]:
        return {e.sha256: e for e in self.entries.values()}

    def get(self, key: str) -> SlideEntry:
        try:
            return self.entries[key]
        except KeyError:
            known = ", ".join(sorted(self.entries)) or "none"
            raise KeyError(
                f"slide partition {key!r} is not registered (registered: {known}). Add the slide with "
                "`histofactory slides add PATH` or drop it in the inbox for the sensor."
            ) from None

    def scan(self, inbox: str | os.PathLike[str], check: Callable[[Path], object] | None = None) -> ScanResult:
        """Reconcile the registry with the inbox folder (does not save; call ``save``).

        Args:
            inbox: The inbox folder.
            check: Called on every new or changed slide file before it is registered; a ``ValueError`` it raises
                (``SlideError`` is one) refuses the file: it is reported in ``refused`` with the message and not
                registered (a registered file that changed into a broken one keeps its old entry; its tiling fails with
                the same message). A refused file is
                checked again only when its size or modification time changes, so a sensor warns once per file.
        """
        inbox = Path(inbox)
        result = ScanResult()
        present = {p.name: p for p in sorted(inbox.iterdir())} if inbox.exists() else {}
        self.refused = {n: r for n, r in self.refused.items() if n in present}
        by_file = self.by_file()
        for name, entry in list(by_file.items()):
            if name not in present or not present[name].is_file():
                del self.entries[entry.key]
                result.removed.append(entry)
        for name, path in present.items():
            if name.startswith(".") or path.is_dir():
                continue
            if not is_slide_file(path):
                result.ignored.append(name)
                continue
            stat = path.stat()
            known = self.by_file().get(name)
            if known and known.size == stat.st_size and known.mtime_ns == stat.st_mtime_ns:
                continue
            if self.refused.get(name, [None, None])[:2] == [stat.st_size, stat.st_mtime_ns]:
                continue
            if check is not None:
                try:
                    check(path)
                except ValueError as exc:
                    self.refused[name] = [stat.st_size, stat.st_mtime_ns, str(exc)]
                    result.refused.append((name, str(exc)))
                    continue
            self.refused.pop(name, None)
            digest = file_sha256(path)
            twin = self.by_hash().get(digest)
            if twin and twin.file != name:
                result.duplicates.append((name, twin.key))
                continue
            key = known.key if known else self._free_key(sanitize_key(slide_stem(name)), digest)
            entry = SlideEntry(key, name, digest, slide_id_for(digest), stat.st_size, stat.st_mtime_ns)
            self.entries[key] = entry
            if not known:
                result.added.append(entry)
        return result

    def _free_key(self, key: str, digest: str) -> str:
        """The stem's key, or (when another file already has it) the key with a short hash suffix."""
        return key if key not in self.entries else f"{key}_{digest[:6]}"
