"""The built-in ``jsonl`` loader: one JSON object per line, plain or gzip-compressed.

Read with bounded memory whatever the file holds: a line longer than ``MAX_LINE_BYTES``
is one dropped record (``too_long``), read past in pieces and never held whole, so a
small gzip that expands to one huge line costs no more than the limit; runs of blank
lines are skipped a buffer at a time rather than line by line. A ``.gz`` file that is
not gzip, is cut short or is corrupt stops prepare with one line naming the file and
the last line read.
"""

from __future__ import annotations

import codecs
import gzip
import io
import json
import re
import zlib
from collections.abc import Iterator
from pathlib import Path

from lorapipe.plugin import FileLoader, RawRecord, RecordError, hookimpl

# No conversation nests this deep, and ``json.loads`` recurses once per level: a line of
# 100,000 "[" would raise RecursionError and end prepare instead of being one bad record.
MAX_DEPTH = 100
_JSON_STRING = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"')
_NOT_A_BRACKET = bytes(b for b in range(256) if b not in b"[]{}")
# Past 2 million tokens at cleaning's 32 characters a token (CHARS_PER_TOKEN), more than
# any data.max_length keeps even with every character escaped (\uXXXX is 6 bytes).
MAX_LINE_BYTES = 64 << 20
_CONTENT = re.compile(rb"\S")  # what makes a line more than layout
_PIECE = 1 << 20  # bytes read at a time past an over-long line


def _open(path: Path) -> gzip.GzipFile | io.BufferedReader:
    return gzip.open(path, "rb") if path.suffix == ".gz" else path.open("rb")


def _lines(handle: gzip.GzipFile | io.BufferedReader,
           limit: int) -> Iterator[tuple[int, bytes | int]]:
    """Each line of ``handle`` that is not blank, with its number: its bytes (less a
    leading BOM), or for one longer than ``limit`` bytes (newline aside) its length,
    counted a piece at a time.

    Blank lines are skipped a buffer at a time (``peek``), so a file of newlines costs
    what decompressing it costs, not a Python call per line. A truncated or corrupt
    stream raises as it is read (``EOFError``, ``OSError``, ``zlib.error``).
    """
    number = 0  # lines consumed so far
    while ahead := handle.peek(_PIECE):  # what is buffered; never more than one read
        found = _CONTENT.search(ahead)
        layout = ahead.rfind(b"\n", 0, found.start() if found else len(ahead)) + 1
        if layout:  # whole blank lines before the next content: skipped in one read
            number += ahead.count(b"\n", 0, layout)
            handle.read(layout)
            continue
        number += 1
        raw = handle.readline(limit + 1)
        if len(raw) <= limit or raw.endswith(b"\n"):
            if number == 1:  # editors on Windows start UTF-8 files with a BOM
                raw = raw.removeprefix(codecs.BOM_UTF8)
            if _CONTENT.search(raw):  # else spaces ending the file, or a BOM alone
                yield number, raw
            continue
        length, blank = len(raw), not _CONTENT.search(raw)
        del raw  # not held while the rest is read past
        while piece := handle.readline(_PIECE):
            blank = blank and not _CONTENT.search(piece)
            if piece.endswith(b"\n"):
                length += len(piece) - 1
                break
            length += len(piece)
        if not blank:
            yield number, length


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
        number = 0
        try:
            with _open(path) as handle:
                for number, raw in _lines(handle, MAX_LINE_BYTES):
                    yield self._record(str(path), number, raw)
        # A stream cut short or corrupt ends prepare rather than dropping "the rest": how
        # many records it held is unknown, and training on a silent prefix of the data is
        # worse than a clear stop (an interrupted download or copy is the usual cause).
        except (OSError, EOFError, zlib.error) as err:
            where = f" after line {number}" if number else ""
            if isinstance(err, EOFError):
                what = (f"ends in the middle of its gzip stream{where}: it was cut short "
                        "(an interrupted download or copy?); fetch or copy it again")
            elif number == 0 and isinstance(err, gzip.BadGzipFile):
                what = f"is not a gzip file ({err}); name it .jsonl if it is plain JSON Lines"
            elif isinstance(err, (gzip.BadGzipFile, zlib.error)):
                what = f"is corrupt{where} ({err}); fetch or copy it again"
            else:
                what = f"cannot be read{where}: {err}"
            raise self.config_error(f"{path} {what}", option="path") from None

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
