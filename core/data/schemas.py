"""Common dataset schemas mapped onto one record model.

Loaders yield raw JSON objects; this module — not each loader — knows the file formats
people actually have. A record is one of these kinds (``Record.kind``):

- ``chat``: a conversation (``messages.py`` maps the message shapes: OpenAI/Hugging
  Face ``messages`` with tool calls and reasoning, ShareGPT incl. LLaMA-Factory's
  ``function_call``/``observation``), with the record-level ``tools`` it may use; alpaca,
  prompt/response and the design's instruction/response records are one-exchange chats;
- ``text``: a raw document for continued pretraining (``text``), trained whole;
- ``completion``: a ``prompt``/``completion`` pair (TRL's names) for a base model: no
  template, the completion trained;
- ``preference``: a prompt (text or messages) with a ``chosen`` and a ``rejected`` reply
  (text or assistant messages), or, UltraFeedback/HH style, ``chosen`` and ``rejected``
  as whole conversations sharing their prompt; a preference objective (``dpo``) trains
  on both sides, ``sft`` on the chosen one;
- ``unpaired``: a prompt (text or messages) and a ``completion`` (text or assistant
  messages) with a boolean ``label``, desirable or not (TRL's unpaired preference, for
  ``kto``), rendered by the template like a chat.

``data.format: auto`` detects the schema per record, so files in different formats can be
combined; ``data.columns`` renames fields for files that use other names.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Literal

from lorapipe.components import RecordError
from lorapipe.data.messages import (
    ROLES,
    SHAREGPT_ROLES,
    Message,
    as_context,
    conversation,
    tools_list,
)
from lorapipe.errors import ConfigError

# Canonical field name → default name in the file, per format.
COLUMNS: dict[str, dict[str, str]] = {
    "messages": {"messages": "messages", "role": "role", "content": "content",
                 "tools": "tools"},
    "alpaca": {"instruction": "instruction", "input": "input", "output": "output",
               "system": "system"},
    "sharegpt": {"conversations": "conversations", "from": "from", "value": "value",
                 "tools": "tools", "system": "system"},
    "instruction_response": {"instruction": "instruction", "input": "input",
                             "response": "response", "system": "system"},
    "prompt_response": {"prompt": "prompt", "response": "response", "system": "system"},
    "prompt_completion": {"prompt": "prompt", "completion": "completion"},
    "preference": {"prompt": "prompt", "chosen": "chosen", "rejected": "rejected",
                   "tools": "tools", "role": "role", "content": "content"},
    "unpaired": {"prompt": "prompt", "completion": "completion", "label": "label",
                 "tools": "tools", "role": "role", "content": "content"},
    "text": {"text": "text"},
}
# Not part of the conversation: records sharing one are kept on the same side of every
# split (see ``split.py``), so turns of one dialogue cannot leak into the held-out sets.
CONVERSATION_ID = "conversation_id"

# Fields a record must have to be in that format; detection tries them in this order (a
# lone ``text`` last: chat records may carry a text field of their own).
REQUIRED: dict[str, tuple[str, ...]] = {
    "preference": ("chosen", "rejected"), "unpaired": ("prompt", "completion", "label"),
    "messages": ("messages",), "sharegpt": ("conversations",),
    "alpaca": ("instruction", "output"), "instruction_response": ("instruction", "response"),
    "prompt_response": ("prompt", "response"), "prompt_completion": ("prompt", "completion"),
    "text": ("text",),
}
Kind = Literal["chat", "text", "completion", "preference", "unpaired"]
# formats rendered without a chat template (every other one is rendered by it)
KIND = {"text": "text", "prompt_completion": "completion"}


@dataclass(frozen=True)
class Record:
    """One record in the canonical model: ``messages`` (and ``tools``) of a chat,
    ``text`` of a document, ``prompt`` and ``completion`` of a pair, or the prompt
    ``messages`` of a preference pair with its ``chosen`` and ``rejected`` replies."""

    kind: Kind
    messages: tuple[Message, ...] = ()
    tools: list[dict[str, Any]] | None = None
    text: str = ""
    prompt: str = ""
    completion: str = ""
    chosen: tuple[Message, ...] = ()
    rejected: tuple[Message, ...] = ()
    desirable: bool | None = None  # an unpaired reply's label

    def body(self) -> Any:
        """What the prepared data keeps of it (its ``messages`` column, as JSON): the
        message list of a chat, ``{text}``, ``{prompt, completion}`` or
        ``{prompt, chosen, rejected}`` (message lists) otherwise."""
        if self.kind == "chat":
            return list(self.messages)
        if self.kind == "text":
            return {"text": self.text}
        if self.kind == "preference":
            return {"prompt": list(self.messages), "chosen": list(self.chosen),
                    "rejected": list(self.rejected)}
        if self.kind == "unpaired":
            return {"messages": list(self.messages), "label": self.desirable}
        return {"prompt": self.prompt, "completion": self.completion}

    @classmethod
    def from_body(cls, body: Any, tools: list[dict[str, Any]] | None = None) -> Record:
        if isinstance(body, list):
            return cls("chat", tuple(body), tools)
        if "text" in body:
            return cls("text", text=body["text"])
        if "label" in body:
            return cls("unpaired", tuple(body["messages"]), tools, desirable=body["label"])
        if "chosen" in body:
            return cls("preference", tuple(body["prompt"]), tools,
                       chosen=tuple(body["chosen"]), rejected=tuple(body["rejected"]))
        return cls("completion", prompt=body["prompt"], completion=body["completion"])

    def sides(self) -> tuple[tuple[Message, ...], tuple[Message, ...]]:
        """A preference pair's two whole conversations: prompt + chosen, prompt + rejected."""
        return (*self.messages, *self.chosen), (*self.messages, *self.rejected)

    def json(self) -> str:
        return json.dumps(self.body(), ensure_ascii=False)


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
    pair = _names("preference", columns)
    sides = [pair[side] for side in ("chosen", "rejected") if pair[side] in data]
    if len(sides) == 1:
        raise RecordError("missing_side", f"a preference pair with '{sides[0]}' only; "
                          f"it needs both '{pair['chosen']}' and '{pair['rejected']}'")
    keys = ", ".join(sorted(data)) or "none"
    raise RecordError(
        "unknown_schema",
        "no known schema (expected 'messages', 'conversations', 'instruction'+'output', "
        "'instruction'+'response', 'prompt'+'response', 'prompt'+'completion', "
        "'chosen'+'rejected' or 'text' "
        f"fields; map other names with data.columns); keys: {keys}",
    )


def _text(data: dict[str, Any], key: str, required: bool = True) -> str | None:
    value = data.get(key)
    if value is None and not required:
        return None
    if not isinstance(value, str):
        raise RecordError("wrong_type", f"'{key}' must be a string, got {type(value).__name__}")
    return value


def to_record(data: dict[str, Any], fmt: str, columns: dict[str, str]) -> Record:
    """The canonical record of one raw record (``fmt`` may be ``auto``)."""
    if fmt == "auto":
        fmt = detect_format(data, columns)
    names = _names(fmt, columns)
    missing = [names[f] for f in REQUIRED[fmt] if names[f] not in data]
    if missing:
        raise RecordError("wrong_type", f"{fmt} record without '{missing[0]}'")
    if fmt == "text":
        return Record("text", text=_text(data, names["text"]) or "")
    if fmt == "preference":
        return _preference(data, names)
    if fmt == "unpaired":
        return _unpaired(data, names)
    if fmt == "prompt_completion":
        return Record("completion", prompt=_text(data, names["prompt"]) or "",
                      completion=_text(data, names["completion"]) or "")
    if fmt in ("messages", "sharegpt"):
        tools = tools_list(data.get(names["tools"]), names["tools"])
        if fmt == "messages":
            messages = conversation(data[names["messages"]], names["messages"], names["role"],
                                    names["content"], ROLES)
        else:
            messages = conversation(data[names["conversations"]], names["conversations"],
                                    names["from"], names["value"], SHAREGPT_ROLES)
            system = _text(data, names["system"], required=False)  # LLaMA-Factory's column
            if system and not (messages and messages[0]["role"] == "system"):
                messages.insert(0, {"role": "system", "content": system})
        return Record("chat", tuple(messages), tools)
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
    return Record("chat", (*messages, {"role": "user", "content": prompt},
                           {"role": "assistant", "content": reply}))


def _preference(data: dict[str, Any], names: dict[str, str]) -> Record:
    """A pair: ``prompt`` (text or messages) + ``chosen``/``rejected`` (text or assistant
    messages), or, without a prompt, two whole conversations split after the messages
    they share."""
    tools = tools_list(data.get(names["tools"]), names["tools"])
    if names["prompt"] in data:
        return Record("preference", tuple(_prompt(data, names)), tools,
                      chosen=tuple(_reply(data, names, "chosen")),
                      rejected=tuple(_reply(data, names, "rejected")))
    chosen, rejected = (_messages(data, names, key) if isinstance(data[names[key]], list)
                        else None for key in ("chosen", "rejected"))
    if chosen is None or rejected is None:
        raise RecordError("missing_prompt", f"no '{names['prompt']}': '{names['chosen']}' and "
                          f"'{names['rejected']}' must then be whole conversations")
    shared = 0
    while shared < min(len(chosen), len(rejected)) - 1 and chosen[shared] == rejected[shared]:
        shared += 1
    prompt, chosen, rejected = chosen[:shared], chosen[shared:], rejected[shared:]
    if not prompt:
        raise RecordError("missing_prompt", f"no '{names['prompt']}', and '{names['chosen']}'"
                          f" and '{names['rejected']}' share no opening messages")
    _check_reply(chosen, names["chosen"])
    _check_reply(rejected, names["rejected"])
    return Record("preference", tuple(prompt), tools, chosen=tuple(chosen),
                  rejected=tuple(rejected))


def _messages(data: dict[str, Any], names: dict[str, str], key: str) -> list[Message]:
    return conversation(data[names[key]], names[key], names["role"], names["content"], ROLES)


def _check_reply(reply: list[Message], name: str) -> None:
    if not reply or any(m["role"] != "assistant" for m in reply):
        raise RecordError("wrong_type", f"'{name}' must be the assistant's reply (a string "
                          "or assistant messages) after the prompt")


def _reply(data: dict[str, Any], names: dict[str, str], key: str) -> list[Message]:
    """A reply written as text or as assistant messages."""
    if isinstance(data[names[key]], str):
        return [{"role": "assistant", "content": data[names[key]]}]
    reply = _messages(data, names, key)
    _check_reply(reply, names[key])
    return reply


def _prompt(data: dict[str, Any], names: dict[str, str]) -> list[Message]:
    value = data[names["prompt"]]
    if isinstance(value, str):
        return [{"role": "user", "content": value}]
    return _messages(data, names, "prompt")


def _unpaired(data: dict[str, Any], names: dict[str, str]) -> Record:
    """A reply rated desirable (``label: true``) or not, after its prompt; the prompt's
    own assistant turns are context."""
    label = data[names["label"]]
    if not isinstance(label, bool):
        raise RecordError("wrong_type", f"'{names['label']}' must be true or false, got "
                          f"{json.dumps(label)}")
    return Record("unpaired", (*as_context(_prompt(data, names)),
                               *_reply(data, names, "completion")),
                  tools_list(data.get(names["tools"]), names["tools"]), desirable=label)


def to_messages(data: dict[str, Any], fmt: str, columns: dict[str, str]) -> list[Message]:
    """The conversation of one raw chat record (``fmt`` may be ``auto``)."""
    record = to_record(data, fmt, columns)
    if record.kind != "chat":
        raise RecordError("not_a_conversation", f"a {record.kind} record, not a conversation")
    return list(record.messages)


def conversation_id(data: dict[str, Any], columns: dict[str, str]) -> str | None:
    """The record's ``conversation_id`` (any scalar, as text), or ``None``."""
    value = data.get(columns.get(CONVERSATION_ID, CONVERSATION_ID))
    if value is None:
        return None
    if isinstance(value, (dict, list)):
        raise RecordError("wrong_type", f"'{CONVERSATION_ID}' must be a string or number")
    return str(value)
