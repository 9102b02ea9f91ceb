"""The ``json`` loader: a JSON file holding a list of records.

A ``.json`` file is one document, so it is parsed whole (unlike ``jsonl``); a document
that does not parse is a file-level error, not one bad record, because nothing in it can
be read. The list is the top-level array, or the value under ``field`` (dotted for nested
objects, like ``datasets``' ``field=``) of a top-level object.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from lorapipe.plugin import FileLoader, FileOptions, RawRecord, RecordError, UserError


class JsonOptions(FileOptions):
    field: str | None = None


def _parse(path: Path) -> Any:
    try:
        text = path.read_bytes().decode("utf-8-sig")
    except UnicodeDecodeError as err:
        raise UserError(f"{path}: not UTF-8 ({err.reason} at byte {err.start})") from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as err:
        raise UserError(
            f"{path}:{err.lineno}: malformed JSON: {err.msg} (column {err.colno}); a .json "
            "file must be one JSON document (use the jsonl loader for one object per line)"
        ) from None


def _list_keys(document: dict[str, Any], prefix: str = "") -> list[str]:
    """Dotted names of every list inside ``document``, for the error that asks for one."""
    keys = []
    for key, value in document.items():
        if isinstance(value, list):
            keys.append(prefix + key)
        elif isinstance(value, dict):
            keys += _list_keys(value, f"{prefix}{key}.")
    return keys


def _records(document: Any, field: str | None, path: Path, option: str) -> list[Any]:
    """The list of records in ``document``; ``option`` is the YAML field of ``field``."""
    if field is None:
        if isinstance(document, list):
            return document
        hint = ""
        if isinstance(document, dict):
            found = _list_keys(document)
            hint = f" Lists in it: {', '.join(found)}." if found else " It holds no list."
        raise UserError(
            f"{path}: the top level is a {type(document).__name__}, not a list of records; "
            f"set {option} to the key that holds the records.{hint}"
        )
    node = document
    for part in field.split("."):
        if not isinstance(node, dict) or part not in node:
            found = _list_keys(document) if isinstance(document, dict) else []
            raise UserError(
                f"{path}: {option} '{field}' not found"
                + (f"; lists in this file: {', '.join(found)}" if found else "")
            )
        node = node[part]
    if not isinstance(node, list):
        raise UserError(
            f"{path}: {option} '{field}' holds a {type(node).__name__}, not a list"
        )
    return node


class JsonLoader(FileLoader):
    """JSON files (.json) holding a list of objects, at the top or under ``field``."""

    name = "json"
    Options = JsonOptions

    def read_file(self, path: Path) -> Iterator[RawRecord]:
        source = str(path)
        items = _records(_parse(path), self.options.field, path, f"{self.field}.field")
        for number, item in enumerate(items, start=1):
            location = f"{source}:item {number}"
            if isinstance(item, dict):
                yield RawRecord(source, location, data=item)
            else:
                yield RawRecord(
                    source, location,
                    error=RecordError("wrong_type",
                                      f"expected a JSON object, got {type(item).__name__}"),
                )

