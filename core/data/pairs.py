"""Preference pairs → training samples: both sides rendered by the run's chat template.

Each side is the prompt followed by its reply; the prompt's own assistant turns are
context (not trained), the reply is trained by the template's assistant mask, so the
shared prompt is masked the same way on both. The two renderings must agree token for
token up to the first trained token, or the objective would compare replies to different
prompts: such a pair is dropped, as is one whose longer side does not fit
``data.max_length`` (``truncate_history`` first drops the prompt's earliest exchanges,
``truncate_prompt`` then cuts its first user turn from the start, on both sides alike; a
reply is never cut, which would change what was preferred).
"""

from __future__ import annotations

from dataclasses import replace
from typing import TYPE_CHECKING

from lorapipe.components import EncodedConversation, RecordError, UnrenderableConversation
from lorapipe.data.length import SHORTEN_PROMPT, encoded_length, shorten_prompt
from lorapipe.data.messages import Message, as_context
from lorapipe.data.schemas import Record

if TYPE_CHECKING:
    from lorapipe.data.samples import Sample, _Chats


def encode_pairs(chats: _Chats, records: list[Record]) -> list[Sample | RecordError]:
    """Each pair's sample (chosen in ``encoded``, rejected in ``rejected``), or why not."""
    outcomes: list[Sample | RecordError] = []
    for record in records:
        try:
            outcomes.append(_fitted(chats, record))
        except RecordError as err:
            outcomes.append(err)
    return outcomes


def _encode(chats: _Chats, record: Record) -> tuple[EncodedConversation, EncodedConversation]:
    prompt = as_context(record.messages)
    try:
        chosen, rejected = (chats.encode([*prompt, *reply], record.tools)
                            for reply in (record.chosen, record.rejected))
    except UnrenderableConversation as err:
        raise RecordError("unrenderable", str(err)) from None
    for side, encoded in (("chosen", chosen), ("rejected", rejected)):
        if not any(encoded.trainable):
            raise RecordError("no_trainable_tokens", f"no token of the {side} reply is trained")
    if _prompt(chosen) != _prompt(rejected):
        raise RecordError("prompt_differs", "the chat template renders the prompt differently "
                          "before the chosen and the rejected reply")
    return chosen, rejected


def _prompt(encoded: EncodedConversation) -> list[int]:
    return encoded.input_ids[:encoded.trainable.index(True)]


def _fitted(chats: _Chats, record: Record) -> Sample:
    from lorapipe.data.samples import Sample

    missing = chats.missing(record)
    if missing is not None:
        raise missing
    max_length, strategy = chats.data.max_length, chats.data.length_strategy
    sides = _encode(chats, record)
    length = encoded_length(sides)
    if length <= max_length:
        return Sample(record, sides[0], False, "record", sides[1])
    if strategy not in SHORTEN_PROMPT:
        raise RecordError("too_long", f"the longer side has {length} tokens > "
                          f"data.max_length {max_length}; a reply is never cut "
                          "(data.length_strategy: truncate_prompt shortens the prompt from "
                          "its start)")

    def encode(messages: list[Message]) -> tuple[EncodedConversation, EncodedConversation]:
        return _encode(chats, replace(record, messages=tuple(messages)))

    messages, (chosen, rejected) = shorten_prompt(
        list(record.messages), encode, max_length, length, chats.tokenizer, strategy,
        reply_follows=True)
    return Sample(replace(record, messages=tuple(messages)), chosen, True, "record", rejected)
