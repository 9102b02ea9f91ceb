"""A pydantic ``ValidationError`` as one line naming the YAML field, with a did-you-mean:
for the pipeline's sections and for every plugin's ``Options`` alike."""

from __future__ import annotations

import difflib
import reprlib
from typing import Any

from pydantic import BaseModel, ValidationError

from lorapipe.errors import ConfigError


def config_error(
    err: ValidationError, model: type[BaseModel], prefix: str = "", owner: str | None = None
) -> ConfigError:
    """The most useful pydantic error as one line naming the field, with a did-you-mean.

    An unknown key comes first: a misspelled option usually also leaves the real one
    missing, and reporting that would hide the typo the user has to fix.
    """
    errors = err.errors(include_url=False)
    first = next((e for e in errors if e["type"] == "extra_forbidden"), errors[0])
    loc = [str(part) for part in first["loc"] if not _is_union_tag(part)]
    field = ".".join([prefix, *loc] if prefix else loc)
    kind = first["type"]
    if kind == "extra_forbidden":
        known = _known_fields(model, loc[:-1])
        what = f"unknown option for {owner}" if owner else "unknown key"
        message = f"{what}. {_did_you_mean(loc[-1], known)}"
    elif kind == "missing":
        message = "required but missing"
    else:
        message = first["msg"].removeprefix("Value error, ")
        if "input" in first and kind not in ("model_type", "dict_type", "value_error"):
            message += f" (got {_short_repr(first['input'])})"
    if len(errors) > 1:
        message += f" [and {len(errors) - 1} more problem(s); fix this one first]"
    return ConfigError(field, message)


def file_problem(err: ValidationError, unknown: str = "unknown key") -> str:
    """The first problem pydantic found in a file lorapipe reads back (run.json, a
    checkpoint's state.json) as ``field: what is wrong (got value)``, on one line: the
    file's keys are quoted unless they are plain names. ``unknown``: what to call a key
    the schema does not have."""
    first, *rest = err.errors(include_url=False)
    field = ".".join(p if str(p).isidentifier() else repr(p) for p in first["loc"])
    kind, message = first["type"], first["msg"].removeprefix("Value error, ")
    if kind in ("unexpected_keyword_argument", "extra_forbidden"):
        message = unknown
    got = "" if kind in ("json_invalid", "value_error") else f" (got {first['input']!r:.40})"
    more = f" (and {len(rest)} more)" if rest else ""
    return f"{field + ': ' if field else ''}{message}{got}{more}"


_REPR = reprlib.Repr()
_REPR.maxlevel, _REPR.maxstring, _REPR.maxother = 2, 80, 80
_REPR_CHARS = 80


def _short_repr(value: Any) -> str:
    """``repr(value)`` cut to about 80 characters, without building the whole of it: the
    message is one line, and a value may be a megabyte string or a huge nested list."""
    text = _REPR.repr(value)
    return text if len(text) <= _REPR_CHARS else text[: _REPR_CHARS - 3] + "..."


def _is_union_tag(part: Any) -> bool:
    # pydantic puts the union member's name (e.g. 'ComponentRef', 'int') into the location
    return isinstance(part, str) and (part[:1].isupper() or part in {"int", "float", "str", "none"})


def _known_fields(model: type[BaseModel], path: list[str]) -> list[str]:
    current: Any = model
    for part in path:
        if part.isdigit():
            continue
        field = getattr(current, "model_fields", {}).get(part)
        if field is None:
            return []
        current = _model_in(field.annotation)
        if current is None:
            return []
    return list(getattr(current, "model_fields", {}))


def _model_in(annotation: Any) -> type[BaseModel] | None:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in getattr(annotation, "__args__", ()):
        found = _model_in(arg)
        if found is not None:
            return found
    return None


def _did_you_mean(name: str, known: list[str]) -> str:
    close = difflib.get_close_matches(name, known, n=1, cutoff=0.6)
    if close:
        return f"Did you mean '{close[0]}'?"
    return f"Valid keys: {', '.join(known)}." if known else "Remove it."

