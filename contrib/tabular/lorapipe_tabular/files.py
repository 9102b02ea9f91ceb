"""What the three loaders share: a ``path`` option of files or globs, and a fingerprint."""

from __future__ import annotations

import hashlib
from pathlib import Path

from pydantic import field_validator

from lorapipe.components import Options
from lorapipe.plugins.loaders.jsonl import expand_paths

__all__ = ["FileOptions", "expand_paths", "fingerprint"]


class FileOptions(Options):
    """``path``: one file, a glob, or a list of them; each must match a file now."""

    path: list[str]

    @field_validator("path", mode="before")
    @classmethod
    def _listify(cls, value: object) -> object:
        return [value] if isinstance(value, str) else value

    @field_validator("path")
    @classmethod
    def _exists(cls, value: list[str]) -> list[str]:
        if not value:
            raise ValueError("give at least one file or glob pattern")
        expand_paths(value)
        return value


def fingerprint(options: FileOptions) -> str:
    """SHA-256 over the options (a new delimiter reads other records) and every file's bytes."""
    digest = hashlib.sha256(options.model_dump_json().encode() + b"\0")
    for path in expand_paths(options.path):
        digest.update(str(path).encode() + b"\0")
        with Path(path).open("rb") as handle:
            while chunk := handle.read(1 << 20):
                digest.update(chunk)
    return digest.hexdigest()
