"""The built-in ``jsonl`` loader: one JSON object per line, plain or gzip-compressed."""

from __future__ import annotations

import codecs
import gzip
import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import IO

from lorapipe.plugin import FileLoader, RawRecord, RecordError, hookimpl

# No conversation nests this deep, and ``json.loads`` recurses once per level: a line of
# 100,000 "[" would raise RecursionError and end prepare instead of being one bad record.
MAX_DEPTH = 100
_JSON_STRING = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"')
_NOT_A_BRACKET = bytes(b for b in range(256) if b not in b"[]{}")


def _open(path: Path) -> IO[bytes]:
    return gzip.open(path, "rb") if path.suffix == ".gz" else path.open("rb")


def _too_deep(raw: bytes) -> bool:
    """Whether the JSON on ``raw`` nests deeper than ``MAX_DEPTH`` arrays and objects.

    Costs two C-speed counts for almost every line: only a line with that many opening
    brackets at all is scanned, and then only its brackets outside strings.
    """
    if raw.count(b"[") + raw.count(b"{") <= MAX_DEPTH:
        return False
    depth = 0
    for byte in _JSON_STRING.sub(b"", raw).translate(None, _NOT_A_BRACKET):
        depth += 1 if byte in b"[{" else -1
        if depth > MAX_DEPTH:
            return True
    return False


class JsonlLoader(FileLoader):
    """JSON Lines files (.jsonl, .jsonl.gz); several files or globs; streamed line by line."""

    name = "jsonl"

    def read_file(self, path: Path) -> Iterator[RawRecord]:
        source = str(path)
        with _open(path) as handle:
            for number, raw in enumerate(handle, start=1):
                location = f"{source}:{number}"
                if number == 1:  # editors on Windows start UTF-8 files with a BOM
                    raw = raw.removeprefix(codecs.BOM_UTF8)
                if not raw.strip():
                    continue  # blank lines are layout, not records
                try:
                    text = raw.decode("utf-8")
                except UnicodeDecodeError as err:
                    why = RecordError("invalid_text",
                                      f"not UTF-8 ({err.reason} at byte {err.start})")
                    yield RawRecord(source, location, error=why)
                    continue
                if _too_deep(raw):
                    why = RecordError("malformed_json", f"nested deeper than {MAX_DEPTH} levels")
                    yield RawRecord(source, location, error=why)
                    continue
                try:
                    data = json.loads(text)
                except json.JSONDecodeError as err:
                    why = RecordError("malformed_json", f"{err.msg} (column {err.colno})")
                    yield RawRecord(source, location, error=why)
                    continue
                except ValueError as err:  # an integer past Python's digit limit
                    why = RecordError("malformed_json", str(err).split(";")[0])
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
