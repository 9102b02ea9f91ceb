"""Loaders that read files: a ``path`` option of files or globs, and a content fingerprint.

The built-in ``jsonl`` loader and third-party file formats (contrib's csv, json, parquet)
subclass :class:`FileLoader` and only say how to read one file.
"""

from __future__ import annotations

import glob
import hashlib
import os
from abc import abstractmethod
from collections.abc import Iterator
from pathlib import Path

from pydantic import field_validator

from lorapipe.component import Options
from lorapipe.components import Loader, RawRecord


def expand_paths(patterns: list[str]) -> list[Path]:
    """Files named by paths or glob patterns, in a stable order; each must match something."""
    files: list[Path] = []
    for pattern in patterns:
        pattern = os.path.expandvars(os.path.expanduser(pattern))  # "~/data", "$DATA/x"
        matches = [Path(m) for m in sorted(glob.glob(pattern, recursive=True))]
        matches = [m for m in matches if m.is_file()]
        if not matches:
            raise ValueError(
                f"no file matches '{pattern}' (relative paths are read from the "
                "directory lorapipe is run in)"
            )
        files += [m for m in matches if m not in files]
    return files


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


class FileLoader(Loader):
    """Reads every matched file in order; a subclass implements :meth:`read_file`."""

    Options = FileOptions

    def records(self) -> Iterator[RawRecord]:
        for path in expand_paths(self.options.path):
            yield from self.read_file(path)

    @abstractmethod
    def read_file(self, path: Path) -> Iterator[RawRecord]:
        """The records of one file, each with its ``path:line`` location."""

    def fingerprint(self) -> str:
        """SHA-256 over the options (a new delimiter reads other records) and every file."""
        digest = hashlib.sha256(self.options.model_dump_json().encode() + b"\0")
        for path in expand_paths(self.options.path):
            digest.update(str(path).encode() + b"\0")
            with path.open("rb") as handle:
                while chunk := handle.read(1 << 20):
                    digest.update(chunk)
        return digest.hexdigest()
