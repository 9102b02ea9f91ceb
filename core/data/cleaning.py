"""Checks a canonical record must pass, and the key exact duplicates share."""

from __future__ import annotations

import hashlib
import json
import re

from lorapipe.components import RecordError
from lorapipe.data.messages import Message
from lorapipe.data.schemas import Record

# C0/C1 control characters other than tab and newlines, and lone surrogates (a JSON
# "\ud800" escape decodes to one; it cannot be encoded back to UTF-8).
_BAD_TEXT = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f\ud800-\udfff]")

# Characters of message content one token of ``data.max_length`` may stand for. A token is
# rarely more than ~16 characters (runs of spaces or punctuation), so text over twice that
# per token cannot fit and is dropped before it is tokenized: a multi-megabyte line would
# cost seconds and much memory to tokenize only to be dropped.
CHARS_PER_TOKEN = 32


def _texts(message: Message) -> list[str]:
    """Every text of a message a template renders: content, reasoning, call arguments."""
    texts = [message["content"], message.get("reasoning_content") or ""]
    texts += [json.dumps(c["function"], ensure_ascii=False)
              for c in message.get("tool_calls", ())]
    return texts


def _check_text(text: str, what: str) -> None:
    bad = _BAD_TEXT.search(text)
    if bad:
        raise RecordError("invalid_text", f"{what} contains control character "
                                          f"U+{ord(bad.group()):04X}")


def validate(record: Record, max_length: int, *, truncating: bool = False,
             min_response_chars: int = 1) -> None:
    """Raise ``RecordError`` with the report reason if the record cannot be trained on
    (``max_length``: ``data.max_length``, in tokens). With a truncating length strategy a
    long conversation may still be cut to fit, so only one message beyond the bound is.
    A document longer than ``max_length`` is cut into blocks, so it has no bound here."""
    if record.kind == "text":
        _check_text(record.text, "the text")
        if not record.text.strip():
            raise RecordError("empty_text", "the document has no text")
        return
    if record.kind == "completion":
        for name in ("prompt", "completion"):
            _check_text(getattr(record, name), f"the {name}")
        size = len(record.completion.strip())
        if not size:
            raise RecordError("empty_completion", "the completion is empty")
        if size < min_response_chars:
            raise RecordError("too_short", f"the completion has {size} characters, fewer "
                                           f"than data.min_response_chars {min_response_chars}")
        _check_size([len(record.prompt) + len(record.completion)], max_length, truncating)
        return
    if record.kind == "preference":
        if record.chosen == record.rejected:
            raise RecordError("identical_pair", "the chosen and the rejected reply are the same")
        for side in record.sides():
            _check_chat(side, max_length, truncating, min_response_chars)
        return
    _check_chat(record.messages, max_length, truncating, min_response_chars)


def _check_chat(messages: tuple[Message, ...], max_length: int, truncating: bool,
                min_response_chars: int) -> None:
    sizes = [sum(map(len, _texts(m))) for m in messages]
    _check_size(sizes if truncating else [sum(sizes)], max_length, truncating)
    for n, message in enumerate(messages, start=1):
        for text in _texts(message):
            _check_text(text, f"message {n}")
    assistant = [m for m in messages if m["role"] == "assistant"]
    if not assistant:
        raise RecordError("no_assistant_turn", "the conversation has no assistant message")
    for n, message in enumerate(messages, start=1):
        if message["role"] != "assistant" or message.get("tool_calls"):
            continue  # a turn of tool calls has no text to measure
        size = len(message["content"].strip())
        if not size:
            raise RecordError("empty_assistant_content", f"assistant message {n} is empty")
        if size < min_response_chars:
            raise RecordError(
                "too_short",
                f"assistant message {n} has {size} characters, fewer than "
                f"data.min_response_chars {min_response_chars}",
            )


def _check_size(sizes: list[int], max_length: int, truncating: bool) -> None:
    limit = max_length * CHARS_PER_TOKEN
    if max(sizes, default=0) > limit:
        what = "a message of" if truncating else "message content of"
        raise RecordError(
            "too_long",
            f"{what} {max(sizes):,} characters, more than the {limit:,} that "
            f"data.max_length {max_length} tokens can hold ({CHARS_PER_TOKEN} a token); "
            "dropped without tokenizing",
        )


def dedupe_key(record: Record) -> bytes:
    """Hash of the whole record with whitespace runs collapsed and case folded.

    NUL and SOH cannot occur in validated text, so they separate fields unambiguously."""
    if record.kind in ("chat", "preference", "unpaired"):
        sides = ((*record.messages,) if record.kind == "chat" else
                 (*record.messages, *record.chosen, {"role": "\1", "content": ""},
                  *record.rejected, {"role": str(record.desirable), "content": ""}))
        fields = [text for m in sides for text in (m["role"], *_texts(m))]
        if record.tools:
            fields.append(json.dumps(record.tools, sort_keys=True))
    else:
        fields = [record.kind, record.text, record.prompt, record.completion]
    normal = "\0".join(" ".join(f.split()).casefold() for f in fields)
    return hashlib.blake2b(normal.encode(), digest_size=16).digest()
