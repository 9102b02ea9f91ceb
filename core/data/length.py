"""``data.max_length`` strategies: drop, truncate_history, truncate_response.

Truncation edits the conversation (whole turns, or the reply's text) and renders it again
through the template, so a sample never ends in half a special-token structure (a header
without its end-of-turn token, a cut ``<|eot_id|>``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from lorapipe.components import EncodedConversation, RecordError
from lorapipe.data.messages import Message

Encode = Callable[[list[Message]], EncodedConversation]


def _too_long(n: int, max_length: int, what: str = "") -> RecordError:
    return RecordError("too_long", f"{n} tokens{what} > data.max_length {max_length}")


def fit(messages: list[Message], encoded: EncodedConversation, encode: Encode,
        tokenizer: Any, max_length: int,
        strategy: str) -> tuple[list[Message], EncodedConversation, bool]:
    """The conversation and its encoding within ``max_length``, and whether it was cut.

    Raises ``RecordError('too_long')`` when the strategy cannot make it fit.
    """
    length = len(encoded.input_ids)
    if length <= max_length:
        return messages, encoded, False
    if strategy == "truncate_history":
        return _truncate_history(messages, encode, max_length, length)
    if strategy == "truncate_response":
        return _truncate_response(messages, encode, tokenizer, max_length, length)
    raise _too_long(length, max_length)


def _truncate_history(messages: list[Message], encode: Encode, max_length: int,
                      length: int) -> tuple[list[Message], EncodedConversation, bool]:
    """Drop the earliest exchanges (a user turn and what follows it up to the next user
    turn), keeping the system prompt, until the rest fits."""
    system = messages[:1] if messages[0]["role"] == "system" else []
    rest = messages[len(system):]
    while True:
        cut = next((i for i, m in enumerate(rest) if i > 0 and m["role"] == "user"), None)
        if cut is None or not any(m["role"] == "assistant" for m in rest[cut:]):
            raise _too_long(length, max_length, " even with only the last exchange")
        rest = rest[cut:]
        candidate = system + rest
        encoded = encode(candidate)
        if len(encoded.input_ids) <= max_length:
            return candidate, encoded, True


def _truncate_response(messages: list[Message], encode: Encode, tokenizer: Any,
                       max_length: int,
                       length: int) -> tuple[list[Message], EncodedConversation, bool]:
    """Shorten the last assistant reply (keeping its end-of-turn token) until it fits."""
    last = max(i for i, m in enumerate(messages) if m["role"] == "assistant")
    reply = tokenizer(messages[last]["content"], add_special_tokens=False)["input_ids"]
    keep = len(reply) - (length - max_length)
    while keep > 0:
        # A cut inside a multi-byte character decodes to U+FFFD; drop that partial char.
        text = tokenizer.decode(reply[:keep]).rstrip("\ufffd")
        candidate = [*messages[:last], {**messages[last], "content": text}]
        encoded = encode(candidate)
        over = len(encoded.input_ids) - max_length
        if over <= 0 and text.strip():
            return candidate, encoded, True
        keep -= max(over, 1)
    raise _too_long(length, max_length, " with the prompt alone leaving no room for a reply")
