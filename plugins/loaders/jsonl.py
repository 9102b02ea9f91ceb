"""The built-in ``jsonl`` loader: one JSON object per line, plain or gzip-compressed."""

from __future__ import annotations

import gzip
import json
from collections.abc import Iterator
from pathlib import Path
from typing import IO

from lorapipe.plugin import FileLoader, RawRecord, RecordError, hookimpl


def _open(path: Path) -> IO[bytes]:
    return gzip.open(path, "rb") if path.suffix == ".gz" else path.open("rb")


class JsonlLoader(FileLoader):
    """JSON Lines files (.jsonl, .jsonl.gz); several files or globs; streamed line by line."""

    name = "jsonl"

    def read_file(self, path: Path) -> Iterator[RawRecord]:
        source = str(path)
        with _open(path) as handle:
            for number, raw in enumerate(handle, start=1):
                location = f"{source}:{number}"
                if not raw.strip():
                    continue  # blank lines are layout, not records
                try:
                    text = raw.decode("utf-8")
                except UnicodeDecodeError as err:
                    why = RecordError("invalid_text",
                                      f"not UTF-8 ({err.reason} at byte {err.start})")
                    yield RawRecord(source, location, error=why)
                    continue
                try:
                    data = json.loads(text)
                except json.JSONDecodeError as err:
                    why = RecordError("malformed_json", f"{err.msg} (column {err.colno})")
                    yield RawRecord(source, location, error=why)
                    continue
                if not isinstance(data, dict):
                    why = RecordError("wrong_type",
                                      f"expected a JSON object, got {type(data).__name__}")
                    yield RawRecord(source, location, error=why)
                    continue
                yield RawRecord(source, location, data=data)


@hookimpl
def lorapipe_register_loaders(register):  # noqa: ANN001, ANN201 - pluggy hook
    register(JsonlLoader)
