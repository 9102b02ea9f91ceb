"""``data.max_length`` strategies: drop, truncate_history, truncate_prompt,
truncate_response.

Truncation edits the conversation (whole turns, or a message's text) and renders it again
through the template, so a sample never ends in half a special-token structure (a header
without its end-of-turn token, a cut ``<|eot_id|>``). ``truncate_prompt`` is TRL's
``truncation_mode: keep_end`` done this way: the earliest exchanges go first, then the
start of the first user turn's text, so the end of the prompt, next to the reply, stays.
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
    if strategy in SHORTEN_PROMPT:
        candidate, encoded = shorten_prompt(messages, encode, max_length, length, tokenizer,
                                            strategy, reply_follows=False)
        return candidate, encoded, True
    if strategy == "truncate_response":
        return _truncate_response(messages, encode, tokenizer, max_length, length)
    raise _too_long(length, max_length)


# the strategies that shorten the prompt (shorten_prompt), never the reply
SHORTEN_PROMPT = ("truncate_history", "truncate_prompt")


def shorten_prompt(messages: list[Message], encode: Encode, max_length: int, length: int,
                   tokenizer: Any, strategy: str, *, reply_follows: bool,
                   ) -> tuple[list[Message], Any]:
    """``messages`` shortened until ``encode`` of them fits ``max_length``: the earliest
    exchanges (a user turn up to the next one) dropped, the system prompt kept; then, for
    ``truncate_prompt``, the start of the first user turn's text cut away.

    ``reply_follows``: ``messages`` is a prompt whose reply ``encode`` appends, so its last
    user turn is kept; otherwise an assistant turn is kept after the last exchange dropped.
    ``length`` is the tokens of ``encode(messages)``, or of its longer side for a pair.
    Raises ``RecordError('too_long')`` when that cannot make it fit.
    """
    keep_end = tokenizer if strategy == "truncate_prompt" else None
    candidate = messages
    while length > max_length:
        shorter = _without_first_exchange(candidate, reply_follows)
        if shorter is None and keep_end is not None:
            shorter = _without_start(candidate, keep_end, length - max_length)
        if shorter is None:
            what = (" even with the prompt's first user turn cut to nothing"
                    if keep_end is not None else " even with only the last exchange")
            raise _too_long(length, max_length, what)
        candidate = shorter
        encoded = encode(candidate)
        length = encoded_length(encoded)
    return candidate, encoded


def encoded_length(encoded: EncodedConversation | tuple[EncodedConversation, ...]) -> int:
    """Tokens of an encoding, or of the longer side of a pair's two."""
    if isinstance(encoded, tuple):
        return max(len(side.input_ids) for side in encoded)
    return len(encoded.input_ids)


def _without_first_exchange(messages: list[Message], reply_follows: bool
                            ) -> list[Message] | None:
    system = messages[:1] if messages and messages[0]["role"] == "system" else []
    rest = messages[len(system):]
    cut = next((i for i, m in enumerate(rest) if i > 0 and m["role"] == "user"), None)
    if cut is None or not (reply_follows or any(m["role"] == "assistant"
                                                for m in rest[cut:])):
        return None
    return [*system, *rest[cut:]]


def _without_start(messages: list[Message], tokenizer: Any, over: int
                   ) -> list[Message] | None:
    """``messages`` with about ``over`` tokens (at least one) cut from the start of the
    first user turn's text; ``None`` when nothing of that text would be left."""
    first = next((i for i, m in enumerate(messages) if m["role"] == "user"), None)
    if first is None or not isinstance(messages[first].get("content"), str):
        return None
    ids = tokenizer(messages[first]["content"], add_special_tokens=False)["input_ids"]
    # A cut inside a multi-byte character decodes to U+FFFD; drop that partial char.
    text = tokenizer.decode(ids[max(over, 1):]).lstrip("\ufffd")
    if not text.strip():
        return None
    return [*messages[:first], {**messages[first], "content": text}, *messages[first + 1:]]


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
