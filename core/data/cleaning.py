"""Checks a canonical conversation must pass, and the key exact duplicates share."""

from __future__ import annotations

import hashlib
import re

from lorapipe.components import RecordError
from lorapipe.data.schemas import Message

# C0/C1 control characters other than tab and newlines, and lone surrogates (a JSON
# "\ud800" escape decodes to one; it cannot be encoded back to UTF-8).
_BAD_TEXT = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f\ud800-\udfff]")


def validate(messages: list[Message]) -> None:
    """Raise ``RecordError`` with the report reason if the conversation cannot be trained on."""
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
        if message["role"] == "assistant" and not message["content"].strip():
            raise RecordError("empty_assistant_content", f"assistant message {n} is empty")


def dedupe_key(messages: list[Message]) -> bytes:
    """Hash of the whole conversation with whitespace runs collapsed and case folded.

    NUL and SOH cannot occur in validated text, so they separate fields unambiguously."""
    normal = "\0".join(f"{m['role']}\1{' '.join(m['content'].split()).casefold()}"
                        for m in messages)
    return hashlib.blake2b(normal.encode(), digest_size=16).digest()
