"""The built-in ``text`` loader: raw text for continued pretraining (.txt, .md, any text file).

Each document becomes ``{"text": ...}``, which ``data.format: text`` trains on whole.
``sample_by: document`` makes every file one document (location ``path``);
``sample_by: paragraph`` makes every block of lines between blank lines one document
(location ``path:LINE``, the block's first line), streamed line by line so a large file
never sits in memory. (The option is named as in 🤗 datasets' ``text`` builder.)

Text is kept as written except for what is encoding rather than content: a leading UTF-8
BOM is dropped and CRLF line ends become LF. Bytes that are not UTF-8 make their document
bad (``invalid_text``, with the offending byte's offset in the file) instead of stopping
the run, and a file with no text at all is reported (``empty_text``) rather than
contributing nothing unnoticed.

Files may be gzip-compressed (``.txt.gz``), and memory stays bounded whatever they hold:
a document over ``MAX_DOCUMENT_BYTES`` is one bad record (``too_long``) read no further,
and so is a paragraph with a line over ``MAX_LINE_BYTES`` or growing past the former.
"""

from __future__ import annotations

import codecs
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Literal

from lorapipe.plugin import (
    MAX_LINE_BYTES,
    FileLoader,
    FileOptions,
    Line,
    RawRecord,
    RecordError,
    content_lines,
    hookimpl,
    read_head,
)

_BOM = codecs.BOM_UTF8
# A document becomes one string and then its tokens, several times its size in memory;
# larger text belongs in several files or in paragraphs.
MAX_DOCUMENT_BYTES = 256 << 20


class TextOptions(FileOptions):
    sample_by: Literal["document", "paragraph"] = "document"


def _not_utf8(err: UnicodeDecodeError, offset: int) -> RecordError:
    """``err`` from decoding bytes that start ``offset`` bytes into the file."""
    return RecordError("invalid_text", f"not UTF-8 ({err.reason} at byte {offset + err.start})")


def _too_long(what: str) -> RecordError:
    return RecordError("too_long", f"{what} more than the {MAX_DOCUMENT_BYTES:,} bytes a "
                       "document may take; split the file, or read it with sample_by: "
                       "paragraph")


def _empty(source: str) -> RawRecord:
    return RawRecord(source, source, error=RecordError("empty_text", "the file has no text"))


class TextLoader(FileLoader):
    """Plain-text files, one document per file or per blank-line-separated paragraph."""

    name = "text"
    Options = TextOptions

    def read_file(self, path: Path) -> Iterator[RawRecord]:
        def problem(what: str) -> Exception:
            return self.config_error(f"{path} {what}", option="path")

        if self.options.sample_by == "paragraph":
            yield from self._paragraphs(path, problem)
        else:
            yield self._whole(path, problem)

    @staticmethod
    def _whole(path: Path, problem: Callable[[str], Exception]) -> RawRecord:
        source = str(path)
        raw = read_head(path, MAX_DOCUMENT_BYTES, problem)
        if len(raw) > MAX_DOCUMENT_BYTES:
            return RawRecord(source, source, error=_too_long("the file holds"))
        body = raw.removeprefix(_BOM)
        try:
            text = body.decode("utf-8")
        except UnicodeDecodeError as err:
            return RawRecord(source, source, error=_not_utf8(err, len(raw) - len(body)))
        if not text.strip():
            return _empty(source)
        return RawRecord(source, source, data={"text": text.replace("\r\n", "\n")})

    @staticmethod
    def _paragraphs(path: Path, problem: Callable[[str], Exception]) -> Iterator[RawRecord]:
        """Blocks of consecutive lines with text; what lies between them is blank."""
        source = str(path)
        block: _Block | None = None
        for line in content_lines(path, problem, MAX_LINE_BYTES):
            if block is not None and line.number != block.last + 1:
                yield block.record(source)
                block = None
            block = block or _Block(line.number)
            block.add(line)
        if block is not None:
            yield block.record(source)
        else:
            yield _empty(source)


class _Block:
    """A paragraph being read: its lines, or the first reason it is bad (after which no
    more of its text is kept)."""

    def __init__(self, first: int) -> None:
        self.first = self.last = first
        self.lines: list[str] = []
        self.size = 0
        self.error: RecordError | None = None

    def add(self, line: Line) -> None:
        self.last = line.number
        if self.error is not None:
            return
        if isinstance(line.raw, int):
            self.error, self.lines = RecordError("too_long", (
                f"line {line.number} has {line.raw:,} bytes, more than the "
                f"{MAX_LINE_BYTES:,} a line may take")), []
            return
        self.size += len(line.raw)
        if self.size > MAX_DOCUMENT_BYTES:
            self.error, self.lines = _too_long("the paragraph grows to"), []
            return
        try:
            text = line.raw.decode("utf-8")
        except UnicodeDecodeError as err:
            self.error, self.lines = _not_utf8(err, line.offset), []
            return
        self.lines.append(text[:-2] if text.endswith("\r\n") else text.removesuffix("\n"))

    def record(self, source: str) -> RawRecord:
        location = f"{source}:{self.first}"
        if self.error is not None:
            return RawRecord(source, location, error=self.error)
        return RawRecord(source, location, data={"text": "\n".join(self.lines)})


@hookimpl
def lorapipe_register_loaders(register):  # noqa: ANN001, ANN201 - pluggy hook
    register(TextLoader)
