"""The built-in ``tokenizer`` chat template: the model's own ``chat_template``.

The mask comes from the template's own rendering of the whole conversation (with the
record's ``tools``). For each trained assistant message, the conversation is rendered
once more with that message's content replaced by a placeholder the conversation does not
contain: the text before and after the placeholder is what the template writes around the
reply, so in the real rendering the reply is exactly what lies between them, wherever the
template puts it and however it renders earlier or later turns (a system prompt folded
into a user turn, ``<think>`` scaffolding before the reply, tokens appended after the
last message only). The end-of-turn text is what the template writes after the reply
when it ends the conversation, as far as the real rendering agrees (rendering with the
conversation cut after the reply), in whole tokens, without trailing whitespace, and up
to the model's first stop token (``generation_config.json``'s ``eos_token_id``), or
extended to one the template writes next (GLM's ``<|user|>``). Nothing is found by
searching the user's text. Those character spans become token spans through the fast
tokenizer's offsets.

A turn of only tool calls has no content to mark: it starts where its content would
(the placeholder, past added tokens closing an empty content block), else after the
generation prompt; it ends where the next message's header begins, or as far as the
rendering cut after it agrees. Reasoning (``reasoning_content``, mirrored as gpt-oss's
``thinking``) is trained from where the model starts writing after the generation prompt,
think markers included; a turn whose reasoning the whole rendering drops is reported
(``reasoning_dropped``) for ``data.reasoning_turns``.

A record the template renders depending on its text, does not render (a reply, a tool
call, the tools, reasoning), or renders in a way these rules cannot place, is
unrenderable: dropped and counted with its location and the reason. A template that
renders no assistant content at all is refused when first used.

Speed: a plain conversation with ``k`` trained turns needs ``3k + 1`` renders. Through
``apply_chat_template`` each render pays input normalisation and bookkeeping that cost
more than the render itself, so we render with the template transformers compiled, its
globals merged into the variables once (same sandbox, filters and globals, hence the same
text; tests pin that), and tokenize the batch in one call to the Rust tokenizer.
"""

from __future__ import annotations

import json
from functools import cached_property
from pathlib import Path
from typing import Any

from pydantic import FilePath

from lorapipe.plugin import (
    ChatTemplate,
    ConfigError,
    Conversation,
    EncodedConversation,
    Options,
    Tools,
    UnrenderableConversation,
    hookimpl,
    token_range,
    trained_turns,
)

from .rendering import (
    PROBE,
    Renderer,
    Rendering,
    locate_reply,
    without_tools,
)
from .turns import Turn


class TokenizerOptions(Options):
    # Also train what the template writes between the generation prompt and a reply (an
    # empty <think></think> block): a model that should emit it itself learns to.
    train_scaffolding: bool = False
    # The tokens the model ends a turn with; by default its EOS and the eos_token_id
    # list of its generation_config.json.
    stop_tokens: list[str] | None = None
    # A Jinja chat template file to use instead of the model's own (it is then saved with
    # the tokenizer, so merged/ and the exports serve it).
    chat_template: FilePath | None = None


def model_stops(tokenizer: Any) -> tuple[str, ...]:
    """The model's stop tokens: its EOS and those of the ``generation_config.json`` beside
    its tokenizer (Llama 3: <|eot_id|>, <|eom_id|>; GLM: <|user|>, <|observation|>)."""
    ids = {tokenizer.eos_token_id} - {None}
    config = Path(tokenizer.name_or_path or "") / "generation_config.json"
    if config.is_file():
        try:
            listed = json.loads(config.read_text(encoding="utf-8")).get("eos_token_id")
        except (OSError, ValueError, AttributeError):
            listed = None
        ids |= {i for i in (listed if isinstance(listed, list) else [listed])
                if isinstance(i, int)}
    return tuple(t for t in tokenizer.convert_ids_to_tokens(sorted(ids)) if t)


class TokenizerTemplate(ChatTemplate):
    """The model tokenizer's own chat_template, masked from its rendering of the whole
    conversation."""

    name = "tokenizer"
    Options = TokenizerOptions
    renders = frozenset({"tools", "reasoning"})

    @cached_property
    def _source(self) -> str | None:
        """The template file's text, when the options name one."""
        path = self.options.chat_template
        if path is None:
            return None
        try:
            return path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as err:
            raise self.config_error(f"cannot read {path}: {err}", "chat_template") from None

    def _renderer(self, tokenizer: Any) -> Renderer:
        self._check(tokenizer)
        stops = self.options.stop_tokens
        if stops is None:
            stops = model_stops(tokenizer)
        return Renderer(tokenizer, tuple(sorted(stops, key=len, reverse=True)), self._source)

    def _check(self, tokenizer: Any) -> None:
        if not (self._source or getattr(tokenizer, "chat_template", None)):
            raise self.config_error(
                "the model's tokenizer has no chat_template; name a template for "
                f"{self.field}, or a template file as its chat_template option"
            )
        if not getattr(tokenizer, "is_fast", False):
            raise self.config_error(
                "template 'tokenizer' needs a fast tokenizer (character "
                "offsets map message spans to tokens); this model only has a slow one"
            )

    def _probe(self, render: Renderer) -> None:
        """Refuse a template that cannot show where a reply is, before any record (with
        an empty tools list if it only renders with one, as tool-use templates do)."""
        try:
            locate_reply(render, PROBE, None, 1)
        except UnrenderableConversation as err:
            try:
                locate_reply(render, PROBE, [], 1)
            except UnrenderableConversation:
                raise self._unusable(str(err).removeprefix("the chat template ")) from None

    def _unusable(self, what: str) -> ConfigError:
        return self.config_error(
            f"the model's own chat template {what} for a plain user/assistant exchange, so "
            f"there is no assistant reply to train; name another template for {self.field}"
        )

    def _render(self, messages: Conversation, tools: Tools | None, render: Renderer,
                train_on: str, train_reasoning: bool) -> Rendering:
        """The rendered text, the character spans of its trained assistant turns (what
        the model writes: content, tool calls, reasoning where trained, plus the
        end-of-turn token(s) closing it), and the turns whose reasoning it leaves out."""
        if "\ue000lorapipe-" in json.dumps(messages, ensure_ascii=False):
            raise UnrenderableConversation("the text contains lorapipe's reply placeholder")
        messages = [{**m, "thinking": m["reasoning_content"]} if "reasoning_content" in m
                    else m for m in messages]
        full = render(messages, False, tools)
        if tools and full == without_tools(render, messages):
            raise UnrenderableConversation("the chat template does not render the record's "
                                           "tools (their definitions would not be trained on)")
        spans, dropped = [], []
        for i in sorted(trained_turns(messages, train_on)):
            turn = Turn(render, messages, tools, full, i, self.options.train_scaffolding)
            reasoning = turn.reasoning_start()
            if reasoning is None and messages[i].get("reasoning_content"):
                dropped.append(i)
            start = turn.start(reasoning if train_reasoning else None)
            end = turn.end(start)
            turn.check_calls(start, end)
            spans.append((start, end))
        return Rendering(full, spans, tuple(dropped))

    def encode_batch(
        self,
        conversations: list[Conversation],
        tokenizer: Any,
        *,
        train_on: str = "all_assistant",
        train_on_inputs: bool = False,
        tools: list[Tools | None] | None = None,
        train_reasoning: bool = True,
    ) -> list[EncodedConversation]:
        render = self._renderer(tokenizer)
        self._probe(render)
        rendered = [self._render(m, t, render, train_on, train_reasoning)
                    for m, t in zip(conversations, tools or [None] * len(conversations),
                                    strict=True)]
        # The template itself writes the BOS (as apply_chat_template(tokenize=True) does, we
        # add no special tokens), so it is never doubled. One call to the Rust tokenizer
        # for the batch: the Python wrapper's per-sequence conversion of offsets costs more
        # than we need, as the mask only asks for the tokens at each span's ends.
        backend = tokenizer.backend_tokenizer
        # Truncation or padding saved in tokenizer.json would change the ids;
        # tokenizer(...) switches them off for a call without those options, and so do we.
        if backend.truncation is not None:
            backend.no_truncation()
        if backend.padding is not None:
            backend.no_padding()
        encodings = backend.encode_batch([r.text for r in rendered], add_special_tokens=False)
        out = []
        for encoding, (_, spans, dropped) in zip(encodings, rendered, strict=True):
            ids = encoding.ids  # a new Python list at each access
            trainable = [train_on_inputs] * len(ids)
            if not train_on_inputs:
                for start, end in spans:
                    first, stop = token_range(encoding, start, end)
                    trainable[first:stop] = [True] * (stop - first)
            out.append(EncodedConversation(ids, trainable, dropped))
        return out

    def serving_template(self, tokenizer: Any) -> str | dict[str, str]:
        # the file's, or the model's own with all of its named variants
        return self._source or tokenizer.chat_template

    def generation_prompt(self, messages: Conversation, tokenizer: Any,
                          tools: Tools | None = None) -> list[int]:
        text = self._renderer(tokenizer)(messages, True, tools)
        return tokenizer(text, add_special_tokens=False)["input_ids"]


@hookimpl
def lorapipe_register_chat_templates(register):  # noqa: ANN001, ANN201 - pluggy hook
    register(TokenizerTemplate)
