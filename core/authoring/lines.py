"""Reading a data file line by line with bounded memory, plain or gzip-compressed.

File loaders share this so every format resists the same hostile inputs: a line longer
than the limit is reported by its length and read past in pieces, never held whole (a
small gzip can expand to one huge line); runs of blank lines are skipped a buffer at a
time rather than line by line (a gzip of newlines); a ``.gz`` that is not gzip, is cut
short or is corrupt raises the loader's error naming the file and the last line read.
Python's ``gzip`` and ``io`` read; they have no per-line bound, which is what this adds.
"""

from __future__ import annotations

import codecs
import gzip
import io
import re
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import NamedTuple

# Past 2 million tokens at cleaning's 32 characters a token (CHARS_PER_TOKEN), more than
# any data.max_length keeps even with every character escaped (\uXXXX is 6 bytes).
MAX_LINE_BYTES = 64 << 20
_CONTENT = re.compile(rb"\S")  # what makes a line more than layout
_PIECE = 1 << 20  # bytes read at a time past an over-long line


class Line(NamedTuple):
    number: int  # 1-based, blank lines counted
    offset: int  # bytes of the (decompressed) file before ``raw``
    raw: bytes | int  # the line with its end (a first line without its BOM), or the
    # length of a line longer than the limit, which is not kept


def open_data(path: Path) -> gzip.GzipFile | io.BufferedReader:
    """``path`` for reading bytes, decompressed when its name ends in ``.gz``."""
    return gzip.open(path, "rb") if path.suffix == ".gz" else path.open("rb")


def read_head(path: Path, limit: int, problem: Callable[[str], Exception]) -> bytes:
    """At most ``limit + 1`` bytes of ``path`` (decompressed): more than ``limit`` means
    the file is longer than a caller may hold."""
    try:
        with open_data(path) as handle:
            return handle.read(limit + 1)
    except (OSError, EOFError, zlib.error) as err:
        raise problem(_stream_problem(err, 0)) from None


def content_lines(path: Path, problem: Callable[[str], Exception],
                  limit: int = MAX_LINE_BYTES) -> Iterator[Line]:
    """Each line of ``path`` that is not blank; ``problem(what)`` is raised for a stream
    that cannot be read to its end (what it says completes "<path> ...")."""
    number = 0
    try:
        with open_data(path) as handle:
            for line in _lines(handle, limit):
                number = line.number
                yield line
    # A stream cut short or corrupt ends reading rather than dropping "the rest": how
    # many records it held is unknown, and training on a silent prefix of the data is
    # worse than a clear stop (an interrupted download or copy is the usual cause).
    except (OSError, EOFError, zlib.error) as err:
        raise problem(_stream_problem(err, number)) from None


def _stream_problem(err: BaseException, number: int) -> str:
    where = f" after line {number}" if number else ""
    if isinstance(err, EOFError):
        return (f"ends in the middle of its gzip stream{where}: it was cut short (an "
                "interrupted download or copy?); fetch or copy it again")
    if number == 0 and isinstance(err, gzip.BadGzipFile):
        return f"is not a gzip file ({err}); drop the .gz from its name if it is not compressed"
    if isinstance(err, (gzip.BadGzipFile, zlib.error)):
        return f"is corrupt{where} ({err}); fetch or copy it again"
    return f"cannot be read{where}: {err}"


def _lines(handle: gzip.GzipFile | io.BufferedReader, limit: int) -> Iterator[Line]:
    number = offset = 0  # lines and bytes consumed so far
    while ahead := handle.peek(_PIECE):  # what is buffered; never more than one read
        found = _CONTENT.search(ahead)
        layout = ahead.rfind(b"\n", 0, found.start() if found else len(ahead)) + 1
        if layout:  # whole blank lines before the next content: skipped in one read
            number += ahead.count(b"\n", 0, layout)
            offset += len(handle.read(layout))
            continue
        number += 1
        start = offset
        raw = handle.readline(limit + 1)
        offset += len(raw)
        if len(raw) <= limit or raw.endswith(b"\n"):
            if number == 1 and raw.startswith(codecs.BOM_UTF8):  # Windows editors add it
                raw, start = raw[len(codecs.BOM_UTF8):], start + len(codecs.BOM_UTF8)
            if _CONTENT.search(raw):  # else spaces ending the file, or a BOM alone
                yield Line(number, start, raw)
            continue
        length, blank = len(raw), not _CONTENT.search(raw)
        del raw  # not held while the rest is read past
        while piece := handle.readline(_PIECE):
            offset += len(piece)
            blank = blank and not _CONTENT.search(piece)
            if piece.endswith(b"\n"):
                length += len(piece) - 1
                break
            length += len(piece)
        if not blank:
            yield Line(number, start, length)
