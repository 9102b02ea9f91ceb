"""The ``csv`` loader: delimited text files, streamed row by row.

Locations use spreadsheet row numbers (the header is row 1, a quoted field spanning
several lines is still one row), so ``file.csv:row 7`` is what a user sees in a
spreadsheet. Bytes that are not valid in ``encoding`` make that row bad
(``invalid_text``) instead of stopping the whole file: the file is decoded with
``surrogateescape`` and each row is checked.
"""

from __future__ import annotations

import csv
import re
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from pydantic import field_validator, model_validator

from lorapipe.plugin import FileLoader, FileOptions, RawRecord, RecordError, UserError

_UNDECODABLE = re.compile(r"[\udc80-\udcff]")


class CsvOptions(FileOptions):
    # None: tab for .tsv files, comma otherwise.
    delimiter: str | None = None
    # utf-8-sig reads plain UTF-8 too and drops the BOM spreadsheet programs write.
    encoding: str = "utf-8-sig"
    header: bool = True
    column_names: list[str] | None = None

    @field_validator("delimiter")
    @classmethod
    def _one_char(cls, value: str | None) -> str | None:
        if value is not None and len(value) != 1:
            raise ValueError(f"must be one character, got {value!r} (a tab is \"\\t\")")
        return value

    @field_validator("encoding")
    @classmethod
    def _known(cls, value: str) -> str:
        import codecs

        try:
            codecs.lookup(value)
        except LookupError:
            raise ValueError(f"unknown encoding {value!r} (e.g. utf-8, latin-1, cp1252)") from None
        return value

    @model_validator(mode="after")
    def _names_from_one_place(self) -> CsvOptions:
        if self.header and self.column_names is not None:
            raise ValueError(
                "column_names is for files without a header row; set header: false, or "
                "remove column_names and rename columns with data.columns"
            )
        if not self.header and not self.column_names:
            raise ValueError("a file without a header row needs column_names")
        return self


@contextmanager
def _unlimited_fields() -> Iterator[None]:
    """csv's default 128 KiB field limit would drop long replies; lift it while reading."""
    previous = csv.field_size_limit()
    csv.field_size_limit(min(sys.maxsize, 2**31 - 1))
    try:
        yield
    finally:
        csv.field_size_limit(previous)


class CsvLoader(FileLoader):
    """CSV/TSV files with a header row (or ``column_names``); every value is a string."""

    name = "csv"
    Options = CsvOptions


    def read_file(self, path: Path) -> Iterator[RawRecord]:
        options = self.options
        delimiter = options.delimiter or ("\t" if path.suffix.lower() == ".tsv" else ",")
        source = str(path)
        with (
            path.open(encoding=options.encoding, errors="surrogateescape", newline="") as handle,
            _unlimited_fields(),
        ):
            reader = csv.reader(handle, delimiter=delimiter, strict=True)
            names = options.column_names
            row = 0
            while True:
                row += 1
                location = f"{source}:row {row}"
                try:
                    fields = next(reader)
                except StopIteration:
                    return
                except csv.Error as err:
                    yield RawRecord(source, location, error=RecordError("malformed_csv", str(err)))
                    continue
                if names is None:
                    names = self._header(fields, location)
                    continue
                if not fields:
                    continue  # a blank line is layout, not a record
                yield self._record(source, location, names, fields)

    def _header(self, fields: list[str], location: str) -> list[str]:
        names = [name.strip() for name in fields]
        if _UNDECODABLE.search("".join(names)):
            raise UserError(f"{location}: the header is not valid {self.options.encoding}; "
                            f"set {self.field}.encoding")
        seen = set()
        for name in names:
            if not name:
                raise UserError(f"{location}: the header has an empty column name")
            if name in seen:
                raise UserError(f"{location}: the header names column '{name}' twice")
            seen.add(name)
        return names

    def _record(self, source: str, location: str, names: list[str],
                fields: list[str]) -> RawRecord:
        if len(fields) != len(names):
            return RawRecord(
                source, location,
                error=RecordError("malformed_csv",
                                  f"{len(fields)} fields where the header has {len(names)}"),
            )
        for name, value in zip(names, fields, strict=True):
            bad = _UNDECODABLE.search(value)
            if bad:
                byte = ord(bad.group()) - 0xDC00
                return RawRecord(
                    source, location,
                    error=RecordError("invalid_text",
                                      f"column '{name}' has byte 0x{byte:02X}, not valid "
                                      f"{self.options.encoding} (set {self.field}.encoding)"),
                )
        return RawRecord(source, location, data=dict(zip(names, fields, strict=True)))
