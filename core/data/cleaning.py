"""Checks a canonical conversation must pass, and the key exact duplicates share."""

from __future__ import annotations

import hashlib
import re

from lorapipe.components import RecordError
from lorapipe.data.schemas import Message

# C0/C1 control characters other than tab and newlines, and lone surrogates (a JSON
# "\ud800" escape decodes to one; it cannot be encoded back to UTF-8).
_BAD_TEXT = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f\ud800-\udfff]")

# Characters of message content one token of ``data.max_length`` may stand for. A token is
# rarely more than ~16 characters (runs of spaces or punctuation), so text over twice that
# per token cannot fit and is dropped before it is tokenized: a multi-megabyte line would
# cost seconds and much memory to tokenize only to be dropped.
CHARS_PER_TOKEN = 32


def validate(messages: list[Message], max_length: int, *, truncating: bool = False,
             min_response_chars: int = 1) -> None:
    """Raise ``RecordError`` with the report reason if the conversation cannot be trained on
    (``max_length``: ``data.max_length``, in tokens). With a truncating length strategy a
    long conversation may still be cut to fit, so only one message beyond the bound is."""
    limit = max_length * CHARS_PER_TOKEN
    sizes = [len(m["content"]) for m in messages] if truncating else [
        sum(len(m["content"]) for m in messages)]
    if max(sizes, default=0) > limit:
        what = "a message of" if truncating else "message content of"
        raise RecordError(
            "too_long",
            f"{what} {max(sizes):,} characters, more than the {limit:,} that "
            f"data.max_length {max_length} tokens can hold ({CHARS_PER_TOKEN} a token); "
            "dropped without tokenizing",
        )
    for n, message in enumerate(messages, start=1):
        bad = _BAD_TEXT.search(message["content"])
        if bad:
            raise RecordError(
                "invalid_text",
                f"message {n} contains control character U+{ord(bad.group()):04X}",
            )
    assistant = [m for m in messages if m["role"] == "assistant"]
    if not assistant:
        raise RecordError("no_assistant_turn", "the conversation has no assistant message")
    for n, message in enumerate(messages, start=1):
        if message["role"] != "assistant":
            continue
        size = len(message["content"].strip())
        if not size:
            raise RecordError("empty_assistant_content", f"assistant message {n} is empty")
        if size < min_response_chars:
            raise RecordError(
                "too_short",
                f"assistant message {n} has {size} characters, fewer than "
                f"data.min_response_chars {min_response_chars}",
            )


def dedupe_key(messages: list[Message]) -> bytes:
    """Hash of the whole conversation with whitespace runs collapsed and case folded.

    NUL and SOH cannot occur in validated text, so they separate fields unambiguously."""
    normal = "\0".join(f"{m['role']}\1{' '.join(m['content'].split()).casefold()}"
                        for m in messages)
    return hashlib.blake2b(normal.encode(), digest_size=16).digest()
