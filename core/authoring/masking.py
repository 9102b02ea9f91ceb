"""Helpers chat templates share to build a trainable mask from their own structure.

Templates never search rendered text for marker strings: they know which span of tokens
(or characters) each message produced because they produced it piece by piece.
"""

from __future__ import annotations

from bisect import bisect_left, bisect_right
from typing import Any

from lorapipe.components import EncodedConversation

TRAIN_ON = ("all_assistant", "last_assistant")


def trained_turns(messages: list[dict[str, Any]], train_on: str) -> set[int]:
    """Indices of the assistant messages whose content is trained: per ``train_on``, of
    those a record does not mark ``train: false``."""
    if train_on not in TRAIN_ON:
        raise ValueError(f"train_on must be one of {', '.join(TRAIN_ON)}, got {train_on!r}")
    assistant = [i for i, m in enumerate(messages)
                 if m["role"] == "assistant" and m.get("train", True)]
    if train_on == "last_assistant":
        return set(assistant[-1:])
    return set(assistant)


def assemble(pieces: list[tuple[list[int], bool]], train_on_inputs: bool) -> EncodedConversation:
    """Concatenate (token ids, trainable) pieces into one encoded conversation."""
    input_ids: list[int] = []
    trainable: list[bool] = []
    for ids, train in pieces:
        input_ids += ids
        trainable += [train or train_on_inputs] * len(ids)
    return EncodedConversation(input_ids, trainable)


def token_range(encoding: Any, start: int, end: int) -> tuple[int, int]:
    """Tokens ``[first, stop)`` of a fast-tokenizer ``Encoding`` whose characters overlap
    ``[start, end)``; a token that straddles a boundary counts, so no character of a
    trained span is lost.

    The character offsets of one sequence never decrease from token to token (bytes of one
    character split over several tokens share its offsets), so the range is contiguous:
    the tokens holding its first and last characters, widened over neighbours that share
    them, bound it. Two bisections find it where a character is in no token.
    """
    n = len(encoding)  # not len(encoding.ids), which copies the ids into a new list
    if start < end:
        first = encoding.char_to_token(start)
        last = encoding.char_to_token(end - 1)
        if first is not None and last is not None:
            while first > 0 and encoding.token_to_chars(first - 1)[1] > start:
                first -= 1
            stop = last + 1
            while stop < n and encoding.token_to_chars(stop)[0] < end:
                stop += 1
            return first, stop
    first = bisect_right(range(n), start, key=lambda t: encoding.token_to_chars(t)[1])
    stop = bisect_left(range(n), end, lo=first, key=lambda t: encoding.token_to_chars(t)[0])
    return first, stop


def trained_text(encoded: EncodedConversation, tokenizer: Any) -> list[str]:
    """The decoded text of each maximal run of trained tokens, in order.

    What a chat template's test compares with the assistant replies (each followed by its
    end-of-turn token), and a quick way to see what a sample teaches.
    """
    runs: list[list[int]] = []
    current: list[int] = []
    for token, trained in zip(encoded.input_ids, encoded.trainable, strict=True):
        if trained:
            current.append(token)
        elif current:
            runs.append(current)
            current = []
    if current:
        runs.append(current)
    return [tokenizer.decode(run) for run in runs]
