"""The built-in ``jsonl`` loader: one JSON object per line, plain or gzip-compressed."""

from __future__ import annotations

import glob
import gzip
import hashlib
import json
from collections.abc import Iterator
from pathlib import Path
from typing import IO

from pydantic import field_validator

from lorapipe import hookimpl
from lorapipe.components import Loader, Options, RawRecord


def expand_paths(patterns: list[str]) -> list[Path]:
    """Files named by paths or glob patterns, in a stable order; each must match something."""
    files: list[Path] = []
    for pattern in patterns:
        matches = sorted(glob.glob(pattern, recursive=True))
        matches = [m for m in matches if Path(m).is_file()]
        if not matches:
            raise ValueError(
                f"no file matches '{pattern}' (relative paths are read from the "
                "directory lorapipe is run in)"
            )
        files += [Path(m) for m in matches if Path(m) not in files]
    return files


class JsonlOptions(Options):
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


def _open(path: Path) -> IO[bytes]:
    return gzip.open(path, "rb") if path.suffix == ".gz" else path.open("rb")


class JsonlLoader(Loader):
    """JSON Lines files (.jsonl, .jsonl.gz); several files or globs; streamed line by line."""

    name = "jsonl"
    Options = JsonlOptions

    def records(self) -> Iterator[RawRecord]:
        for path in expand_paths(self.options.path):
            yield from self._read(path)

    def fingerprint(self) -> str:
        """SHA-256 over every matched file's name and bytes (read in 1 MiB chunks)."""
        digest = hashlib.sha256()
        for path in expand_paths(self.options.path):
            digest.update(str(path).encode() + b"\0")
            with path.open("rb") as handle:
                while chunk := handle.read(1 << 20):
                    digest.update(chunk)
        return digest.hexdigest()

    @staticmethod
    def _read(path: Path) -> Iterator[RawRecord]:
        source = str(path)
        with _open(path) as handle:
            for number, raw in enumerate(handle, start=1):
                location = f"{source}:{number}"
                if not raw.strip():
                    continue  # blank lines are layout, not records
                try:
                    text = raw.decode("utf-8")
                except UnicodeDecodeError as err:
                    why = f"invalid_text: not UTF-8 ({err.reason} at byte {err.start})"
                    yield RawRecord(source, location, error=why)
                    continue
                try:
                    data = json.loads(text)
                except json.JSONDecodeError as err:
                    why = f"malformed_json: {err.msg} (column {err.colno})"
                    yield RawRecord(source, location, error=why)
                    continue
                if not isinstance(data, dict):
                    why = f"wrong_type: expected a JSON object, got {type(data).__name__}"
                    yield RawRecord(source, location, error=why)
                    continue
                yield RawRecord(source, location, data=data)


@hookimpl
def lorapipe_register_loaders(register):  # noqa: ANN001, ANN201 - pluggy hook
    register(JsonlLoader)
