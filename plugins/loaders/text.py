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
"""

from __future__ import annotations

import codecs
from collections.abc import Iterator
from pathlib import Path
from typing import Literal

from lorapipe.plugin import FileLoader, FileOptions, RawRecord, RecordError, hookimpl

_BOM = codecs.BOM_UTF8


class TextOptions(FileOptions):
    sample_by: Literal["document", "paragraph"] = "document"


def _not_utf8(err: UnicodeDecodeError, offset: int) -> RecordError:
    """``err`` from decoding bytes that start ``offset`` bytes into the file."""
    return RecordError("invalid_text", f"not UTF-8 ({err.reason} at byte {offset + err.start})")


def _empty(source: str) -> RawRecord:
    return RawRecord(source, source, error=RecordError("empty_text", "the file has no text"))


class TextLoader(FileLoader):
    """Plain-text files, one document per file or per blank-line-separated paragraph."""

    name = "text"
    Options = TextOptions

    def read_file(self, path: Path) -> Iterator[RawRecord]:
        if self.options.sample_by == "paragraph":
            yield from self._paragraphs(path)
        else:
            yield self._whole(path)

    def _whole(self, path: Path) -> RawRecord:
        source = str(path)
        raw = path.read_bytes()
        body = raw.removeprefix(_BOM)
        try:
            text = body.decode("utf-8")
        except UnicodeDecodeError as err:
            return RawRecord(source, source, error=_not_utf8(err, len(raw) - len(body)))
        if not text.strip():
            return _empty(source)
        return RawRecord(source, source, data={"text": text.replace("\r\n", "\n")})

    def _paragraphs(self, path: Path) -> Iterator[RawRecord]:
        source = str(path)
        lines: list[str] = []  # the block being read, without line ends
        first = 0  # its first line's number
        error: RecordError | None = None  # its first undecodable bytes
        found = False
        offset = 0  # bytes of the file before the current line
        with path.open("rb") as handle:
            for number, raw in enumerate(handle, start=1):
                start, offset = offset, offset + len(raw)
                if number == 1 and raw.startswith(_BOM):
                    raw, start = raw[len(_BOM):], start + len(_BOM)
                try:
                    line: str | None = raw.decode("utf-8")
                except UnicodeDecodeError as err:
                    line = None
                    error = error or _not_utf8(err, start)
                if line is not None and not line.strip():
                    if first:  # a blank line ends the block
                        yield self._block(source, first, lines, error)
                        lines, first, error, found = [], 0, None, True
                    continue
                first = first or number
                if line is not None:
                    lines.append(line[:-2] if line.endswith("\r\n") else line.removesuffix("\n"))
        if first:
            yield self._block(source, first, lines, error)
        elif not found:
            yield _empty(source)

    @staticmethod
    def _block(source: str, first: int, lines: list[str],
               error: RecordError | None) -> RawRecord:
        location = f"{source}:{first}"
        if error is not None:
            return RawRecord(source, location, error=error)
        return RawRecord(source, location, data={"text": "\n".join(lines)})


@hookimpl
def lorapipe_register_loaders(register):  # noqa: ANN001, ANN201 - pluggy hook
    register(TextLoader)
