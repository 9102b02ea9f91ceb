"""The built-in ``jsonl`` loader: one JSON object per line, plain or gzip-compressed.

Read with bounded memory whatever the file holds (``lorapipe.plugin.content_lines``): a
line longer than ``MAX_LINE_BYTES`` is one dropped record (``too_long``), never held
whole; a ``.gz`` file that is not gzip, is cut short or is corrupt stops prepare with one
line naming the file and the last line read.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path

from lorapipe.plugin import (
    MAX_LINE_BYTES,
    FileLoader,
    RawRecord,
    RecordError,
    content_lines,
    hookimpl,
)

# No conversation nests this deep, and ``json.loads`` recurses once per level: a line of
# 100,000 "[" would raise RecursionError and end prepare instead of being one bad record.
MAX_DEPTH = 100
_JSON_STRING = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"')
_NOT_A_BRACKET = bytes(b for b in range(256) if b not in b"[]{}")


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
        def problem(what: str) -> Exception:
            return self.config_error(f"{path} {what}", option="path")

        for line in content_lines(path, problem, MAX_LINE_BYTES):
            yield self._record(str(path), line.number, line.raw)

    def _record(self, source: str, number: int, raw: bytes | int) -> RawRecord:
        """The record on line ``number``: ``raw``, its bytes, or the length of a line too
        long to keep."""
        location = f"{source}:{number}"
        if isinstance(raw, int):
            why = RecordError("too_long", (
                f"a line of {raw:,} bytes, more than the {MAX_LINE_BYTES:,} a record may "
                "take; dropped without parsing"))
            return RawRecord(source, location, error=why)
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as err:
            why = RecordError("invalid_text", f"not UTF-8 ({err.reason} at byte {err.start})")
            return RawRecord(source, location, error=why)
        if _too_deep(raw):
            why = RecordError("malformed_json", f"nested deeper than {MAX_DEPTH} levels")
            return RawRecord(source, location, error=why)
        try:
            data = json.loads(text)
        except json.JSONDecodeError as err:
            why = RecordError("malformed_json", f"{err.msg} (column {err.colno})")
            return RawRecord(source, location, error=why)
        except ValueError as err:  # an integer past Python's digit limit
            why = RecordError("malformed_json", str(err).split(";")[0])
            return RawRecord(source, location, error=why)
        if not isinstance(data, dict):
            why = RecordError("wrong_type", f"expected a JSON object, got {type(data).__name__}")
            return RawRecord(source, location, error=why)
        return RawRecord(source, location, data=data)


@hookimpl
def lorapipe_register_loaders(register):  # noqa: ANN001, ANN201 - pluggy hook
    register(JsonlLoader)
