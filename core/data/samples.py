"""Records → training samples, per kind: what ``prepare``'s workers run on each batch.

A chat is rendered by the chat template (batched), fitted to ``data.max_length`` and, where
the template leaves out earlier turns' reasoning and ``data.reasoning_turns`` is
``expand``, split so every reasoning turn is trained with its reasoning; a document is
tokenized and cut into blocks; a prompt/completion pair is tokenized without a template
(``documents.py``). One record may so give several samples; each says where it came from
(``ORIGINS``), so the report counts what was added.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any, NamedTuple

from lorapipe.components import (
    ChatTemplate,
    EncodedConversation,
    RecordError,
    UnrenderableConversation,
)
from lorapipe.config import DataConfig
from lorapipe.data.documents import encode_completion, encode_documents, fit_completion
from lorapipe.data.length import fit
from lorapipe.data.messages import Message
from lorapipe.data.pairs import encode_pairs
from lorapipe.data.schemas import Record

# The record itself; a further block of a long document; a turn whose reasoning the
# template drops once the conversation goes on, trained as its own conversation.
ORIGINS = ("record", "block", "reasoning_turn")


class Sample(NamedTuple):
    record: Record  # as trained: a truncated conversation, an expanded turn's history
    encoded: EncodedConversation
    truncated: bool
    origin: str
    rejected: EncodedConversation | None = None  # a preference pair's other side


Outcome = list[Sample] | RecordError

_FEATURE_NAMES = {"tools": "tool calls or tool results", "reasoning": "reasoning_content"}


def needs(record: Record) -> set[str]:
    """What beyond plain messages a chat record asks its template to render."""
    out = set()
    messages = (*record.messages, *record.chosen, *record.rejected)
    if record.tools or any(m["role"] == "tool" or m.get("tool_calls") for m in messages):
        out.add("tools")
    if any(m.get("reasoning_content") for m in messages):
        out.add("reasoning")
    return out


class _Chats:
    """Encodes the chat records of a batch with ``template``."""

    def __init__(self, template: ChatTemplate, tokenizer: Any, data: DataConfig) -> None:
        self.template, self.tokenizer, self.data = template, tokenizer, data
        self.options: dict[str, Any] = {"train_on": data.train_on,
                                        "train_on_inputs": data.train_on_inputs}
        if "reasoning" in template.renders:
            self.options["train_reasoning"] = data.train_reasoning

    def _features(self, records: list[Record]) -> dict[str, Any]:
        if "tools" in self.template.renders:
            return {"tools": [r.tools for r in records]}
        return {}

    def encode(self, messages: list[Message], tools: Any) -> EncodedConversation:
        record = Record("chat", tuple(messages), tools)
        return self.template.encode_batch([messages], self.tokenizer, **self.options,
                                          **self._features([record]))[0]

    def missing(self, record: Record) -> RecordError | None:
        lacking = needs(record) - self.template.renders
        if not lacking:
            return None
        what = " or ".join(_FEATURE_NAMES[f] for f in sorted(lacking))
        return RecordError(
            "template_cannot_render",
            f"chat template '{self.template.name}' does not render {what}; use "
            "template: tokenizer with a model whose own chat template does")

    def batch(self, records: list[Record]) -> list[Outcome]:
        outcomes: list[Outcome | None] = [self.missing(r) for r in records]
        todo = [i for i, o in enumerate(outcomes) if o is None]
        chats = [records[i] for i in todo]
        conversations = [list(r.messages) for r in chats]
        try:
            encoded: list[Any] = self.template.encode_batch(
                conversations, self.tokenizer, **self.options, **self._features(chats))
        except UnrenderableConversation:  # find which ones, keep the rest
            encoded = []
            for record in chats:
                try:
                    encoded.append(self.encode(list(record.messages), record.tools))
                except UnrenderableConversation as err:
                    encoded.append(err)
        for i, record, enc in zip(todo, chats, encoded, strict=True):
            try:
                if isinstance(enc, UnrenderableConversation):
                    raise RecordError("unrenderable", str(enc))
                outcomes[i] = self._samples(record, enc)
            except RecordError as err:
                outcomes[i] = err
        return outcomes  # type: ignore[return-value] - every slot is filled

    def _fit(self, record: Record, encoded: EncodedConversation, origin: str) -> Sample:
        def encode(messages: list[Message]) -> EncodedConversation:
            return self.encode(messages, record.tools)

        messages, encoded, truncated = fit(list(record.messages), encoded, encode,
                                           self.tokenizer, self.data.max_length,
                                           self.data.length_strategy)
        if not any(encoded.trainable):
            raise RecordError("no_trainable_tokens", "no token of this sample is trained")
        return Sample(replace(record, messages=tuple(messages)), encoded, truncated, origin)

    def _samples(self, record: Record, encoded: EncodedConversation) -> list[Sample]:
        dropped = set(encoded.reasoning_dropped)
        if not dropped or self.data.reasoning_turns == "last":
            return [self._fit(record, encoded, "record")]
        # The turns whose reasoning the whole rendering drops are trained on their own,
        # each as the last turn of its history, which the template renders with it.
        rest = _context(record.messages, dropped)
        samples = []
        if any(m["role"] == "assistant" and m.get("train", True) for m in rest):
            rest_record = replace(record, messages=rest)
            samples.append(self._fit(rest_record, self.encode(list(rest), record.tools),
                                     "record"))
        for turn in sorted(dropped):
            history = _context(record.messages[:turn + 1], set(range(turn)))
            turn_record = replace(record, messages=history)
            samples.append(self._fit(turn_record, self.encode(list(history), record.tools),
                                     "reasoning_turn"))
        return samples


def _context(messages: tuple[Message, ...], untrained: set[int]) -> tuple[Message, ...]:
    """``messages`` with the assistant turns in ``untrained`` marked ``train: false``."""
    return tuple({**m, "train": False} if i in untrained and m["role"] == "assistant" else m
                 for i, m in enumerate(messages))


def encode_records(records: list[Record], template: ChatTemplate, tokenizer: Any,
                   data: DataConfig) -> list[Outcome]:
    """Each record's samples, or why it is dropped, in order."""
    outcomes: list[Outcome | None] = [None] * len(records)
    by_kind: dict[str, list[int]] = {"chat": [], "text": [], "completion": [],
                                     "preference": []}
    for i, record in enumerate(records):
        # a rated reply is a chat whose prompt turns are context; its label rides along
        by_kind["chat" if record.kind == "unpaired" else record.kind].append(i)
    if by_kind["chat"]:
        chats = _Chats(template, tokenizer, data).batch([records[i] for i in by_kind["chat"]])
        for i, outcome in zip(by_kind["chat"], chats, strict=True):
            outcomes[i] = outcome
    if by_kind["preference"]:
        pairs = encode_pairs(_Chats(template, tokenizer, data),
                             [records[i] for i in by_kind["preference"]])
        for i, outcome in zip(by_kind["preference"], pairs, strict=True):
            outcomes[i] = outcome if isinstance(outcome, RecordError) else [outcome]
    if by_kind["text"]:
        documents = encode_documents([records[i].text for i in by_kind["text"]], tokenizer,
                                     data.max_length, data.block_overlap)
        for i, blocks in zip(by_kind["text"], documents, strict=True):
            outcomes[i] = [Sample(records[i], block, False, "record" if k == 0 else "block")
                           for k, block in enumerate(blocks)]
    for i in by_kind["completion"]:
        record = records[i]
        try:
            encoded = encode_completion(record.prompt, record.completion, tokenizer)
            encoded, truncated = fit_completion(encoded, data.max_length,
                                                data.length_strategy, tokenizer.bos_token_id)
            outcomes[i] = [Sample(record, encoded, truncated, "record")]
        except RecordError as err:
            outcomes[i] = err
    return outcomes  # type: ignore[return-value] - every slot is filled
