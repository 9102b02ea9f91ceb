"""Common dataset schemas mapped onto one canonical conversation.

Loaders yield raw JSON objects; this module — not each loader — knows the file formats
people actually have: OpenAI-style ``messages``, alpaca, ShareGPT, prompt/response
columns and the design's own instruction/response records. ``data.format: auto``
detects the schema per record, so files in different formats can be combined;
``data.columns`` renames fields for files that use other names.
"""

from __future__ import annotations

from typing import Any

from lorapipe.components import RecordError
from lorapipe.errors import ConfigError

Message = dict[str, str]

# Canonical field name → default name in the file, per format.
COLUMNS: dict[str, dict[str, str]] = {
    "messages": {"messages": "messages", "role": "role", "content": "content"},
    "alpaca": {"instruction": "instruction", "input": "input", "output": "output",
               "system": "system"},
    "sharegpt": {"conversations": "conversations", "from": "from", "value": "value"},
    "instruction_response": {"instruction": "instruction", "input": "input",
                             "response": "response", "system": "system"},
    "prompt_response": {"prompt": "prompt", "response": "response", "system": "system"},
}
# Not part of the conversation: records sharing one are kept on the same side of every
# split (see ``split.py``), so turns of one dialogue cannot leak into the held-out sets.
CONVERSATION_ID = "conversation_id"

# Fields a record must have to be in that format; detection tries them in this order.
REQUIRED: dict[str, tuple[str, ...]] = {
    "messages": ("messages",), "sharegpt": ("conversations",),
    "alpaca": ("instruction", "output"), "instruction_response": ("instruction", "response"),
    "prompt_response": ("prompt", "response"),
}

ROLES = ("system", "user", "assistant")
SHAREGPT_ROLES = {"system": "system", "human": "user", "user": "user", "gpt": "assistant",
                  "assistant": "assistant", "chatgpt": "assistant"}


def check_columns(columns: dict[str, str]) -> None:
    """``data.columns`` may only rename canonical fields some format knows."""
    known = sorted({name for mapping in COLUMNS.values() for name in mapping}
                   | {CONVERSATION_ID})
    for key in columns:
        if key not in known:
            raise ConfigError(
                f"data.columns.{key}",
                f"unknown field; data.columns renames these fields: {', '.join(known)}",
            )


def _names(fmt: str, columns: dict[str, str]) -> dict[str, str]:
    return {canonical: columns.get(canonical, default)
            for canonical, default in COLUMNS[fmt].items()}


def detect_format(data: dict[str, Any], columns: dict[str, str]) -> str:
    """The schema a record is written in, from the fields it has."""
    for fmt, required in REQUIRED.items():
        names = _names(fmt, columns)
        if all(names[field] in data for field in required):
            return fmt
    keys = ", ".join(sorted(data)) or "none"
    raise RecordError(
        "unknown_schema",
        "no known schema (expected 'messages', 'conversations', 'instruction'+'output', "
        "'instruction'+'response' or 'prompt'+'response' fields; map other names with "
        f"data.columns); keys: {keys}",
    )


def _text(data: dict[str, Any], key: str, required: bool = True) -> str | None:
    value = data.get(key)
    if value is None and not required:
        return None
    if not isinstance(value, str):
        raise RecordError("wrong_type", f"'{key}' must be a string, got {type(value).__name__}")
    return value


def _turns(data: dict[str, Any], list_key: str, role_key: str, content_key: str,
           roles: dict[str, str]) -> list[Message]:
    turns = data[list_key]
    if not isinstance(turns, list):
        raise RecordError("wrong_type", f"'{list_key}' must be a list, got {type(turns).__name__}")
    messages = []
    for n, turn in enumerate(turns, start=1):
        if not isinstance(turn, dict):
            raise RecordError("wrong_type", f"{list_key}[{n}] must be an object")
        role = turn.get(role_key)
        if not isinstance(role, str):
            raise RecordError("wrong_type", f"{list_key}[{n}].{role_key} must be a string")
        if role not in roles:
            raise RecordError(
                "unknown_role",
                f"{list_key}[{n}].{role_key} is '{role}'; expected one of {', '.join(roles)}",
            )
        content = turn.get(content_key)
        if not isinstance(content, str):
            raise RecordError(
                "wrong_type",
                f"{list_key}[{n}].{content_key} must be a string, got {type(content).__name__}",
            )
        messages.append({"role": roles[role], "content": content})
    return messages


def to_messages(data: dict[str, Any], fmt: str, columns: dict[str, str]) -> list[Message]:
    """The canonical conversation of one raw record (``fmt`` may be ``auto``)."""
    if fmt == "auto":
        fmt = detect_format(data, columns)
    names = _names(fmt, columns)
    missing = [names[f] for f in REQUIRED[fmt] if names[f] not in data]
    if missing:
        raise RecordError("wrong_type", f"{fmt} record without '{missing[0]}'")
    if fmt == "messages":
        return _turns(data, names["messages"], names["role"], names["content"],
                      {r: r for r in ROLES})
    if fmt == "sharegpt":
        return _turns(data, names["conversations"], names["from"], names["value"],
                      SHAREGPT_ROLES)
    if fmt in ("alpaca", "instruction_response"):
        system = _text(data, names["system"], required=False)
        prompt = _text(data, names["instruction"])
        extra = _text(data, names["input"], required=False)
        if extra and extra.strip():
            prompt = f"{prompt}\n\n{extra}"
        reply = _text(data, names["output" if fmt == "alpaca" else "response"])
    else:
        system = _text(data, names["system"], required=False)
        prompt = _text(data, names["prompt"])
        reply = _text(data, names["response"])
    messages = [{"role": "system", "content": system}] if system else []
    return messages + [{"role": "user", "content": prompt},
                       {"role": "assistant", "content": reply}]


def conversation_id(data: dict[str, Any], columns: dict[str, str]) -> str | None:
    """The record's ``conversation_id`` (any scalar, as text), or ``None``."""
    value = data.get(columns.get(CONVERSATION_ID, CONVERSATION_ID))
    if value is None:
        return None
    if isinstance(value, (dict, list)):
        raise RecordError("wrong_type", f"'{CONVERSATION_ID}' must be a string or number")
    return str(value)
