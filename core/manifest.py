"""Checksums of what a stage wrote, checked by every stage that reads it.

A directory a stage publishes (a checkpoint, ``adapter/``, ``data/``, ``merged/``, an
exporter's output) gets ``manifest.json`` last: the sha256 of every file in it. A reader
verifies it before trusting the contents, so a flipped bit, a truncated file or a file
changed by hand is caught where it is read, naming the file, instead of being merged,
exported or trained on.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from lorapipe.atomic import atomic_write_json
from lorapipe.errors import UserError

MANIFEST = "manifest.json"


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _published(directory: Path) -> list[Path]:
    """The files below ``directory`` a manifest records: all but itself and dot-files,
    which are temp files and locks, never part of what was published."""
    return sorted(p for p in directory.rglob("*") if p.is_file() and p != directory / MANIFEST
                  and not any(part.startswith(".") for part in p.relative_to(directory).parts))


def write_manifest(directory: Path) -> None:
    """Record every file below ``directory`` (call it after the last one is written)."""
    atomic_write_json(directory / MANIFEST,
                      {str(p.relative_to(directory)): sha256(p) for p in _published(directory)})


def unlisted(directory: Path) -> list[Path]:
    """The files below ``directory`` its manifest would record but does not: put there
    after it was published; none when it has no readable manifest."""
    try:
        listed = set(json.loads((directory / MANIFEST).read_text()))
    except (OSError, ValueError, TypeError):
        return []
    return [p for p in _published(directory) if str(p.relative_to(directory)) not in listed]


def problem(directory: Path, parts: tuple[str, ...] = ()) -> str | None:
    """None if ``directory`` matches its manifest, else what is wrong, naming the file.

    ``parts`` limits the check to those top-level entries (e.g. ``("validation",)`` of
    data/), so a reader does not hash what it never opens.
    """
    manifest = directory / MANIFEST
    if not manifest.is_file():
        return f"{manifest} is missing (the stage that writes {directory.name}/ did not finish)"
    try:
        expected = json.loads(manifest.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError):
        return f"{manifest} is unreadable"
    for name, digest in expected.items():
        if parts and Path(name).parts[0] not in parts:
            continue
        path = directory / name
        if not path.is_file():
            return f"{path} is missing"
        if sha256(path) != digest:
            return f"{path} does not match its checksum (corrupt, or changed since it was written)"
    return None


def require_intact(directory: Path, remedy: str, parts: tuple[str, ...] = ()) -> None:
    """A user error naming the damaged file and ``remedy`` (e.g. "run `lorapipe train
    CONFIG` again") unless ``directory`` (or its ``parts``) matches its manifest."""
    found = problem(directory, parts)
    if found is not None:
        raise UserError(f"{found}; {remedy}")
