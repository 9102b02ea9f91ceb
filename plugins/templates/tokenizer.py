"""The built-in ``tokenizer`` chat template: the model's own ``chat_template``.

The mask comes from rendering the conversation message by message: the text rendered for
the first ``i`` messages plus the generation prompt must be a prefix of the text for the
first ``i + 1`` messages, and the difference is exactly assistant message ``i`` with its
closing end-of-turn token(s). Those character spans become token spans through the fast
tokenizer's character offsets. A chat template that does not render conversations as such
prefixes (e.g. one that rewrites earlier turns once a later one exists) is refused rather
than masked by guesswork.

Speed: a conversation with ``k`` trained turns needs up to ``2k + 1`` renders. Through
``apply_chat_template`` each render pays input normalisation and bookkeeping that cost
more than the render itself, so we render with the template transformers compiled, its
globals merged into the variables once (same sandbox, filters and globals, hence the same
text; tests pin that), and tokenize the batch in one call to the Rust tokenizer.
"""

from __future__ import annotations

from typing import Any

from jinja2 import Template, TemplateError

# Private, but it is exactly what apply_chat_template renders with (sandboxed environment,
# raise_exception/strftime_now/tojson/namespace, the {% generation %} tag), cached per
# template string; copying it would drift from the library's security fixes.
from transformers.utils.chat_template_utils import _compile_jinja_template

from lorapipe.data.masking import token_range, trained_turns
from lorapipe.plugin import (
    ChatTemplate,
    ConfigError,
    EncodedConversation,
    UnrenderableConversation,
    hookimpl,
)

Conversation = list[dict[str, str]]


class _Renderer:
    """``apply_chat_template(messages, tokenize=False, ...)`` for plain role/content
    messages (no tools, documents or extra template variables), without its per-call
    overhead: the compiled template and the special-token variables are looked up once."""

    def __init__(self, tokenizer: Any) -> None:
        # get_chat_template picks "default" when a tokenizer ships several named templates
        self.template: Template = _compile_jinja_template(tokenizer.get_chat_template())
        # What render() puts in each context, merged once: render() merges the template's
        # globals (a ChainMap, slow per key) into a new dict at every call.
        self.variables = {**self.template.globals, "tools": None, "documents": None,
                          **tokenizer.special_tokens_map}

    def __call__(self, messages: Conversation, add_generation_prompt: bool) -> str:
        context = self.template.new_context(
            {**self.variables, "messages": messages,
             "add_generation_prompt": add_generation_prompt},
            shared=True,  # the variables already hold the globals
        )
        try:
            return self.template.environment.concat(self.template.root_render_func(context))
        except TemplateError as err:  # e.g. raise_exception('roles must alternate')
            raise UnrenderableConversation(f"the chat template refused it: {err}") from None


class TokenizerTemplate(ChatTemplate):
    """The model tokenizer's own chat_template, masked by rendering message by message."""

    name = "tokenizer"

    def _check(self, tokenizer: Any) -> None:
        if not getattr(tokenizer, "chat_template", None):
            raise self.config_error(
                "the model's tokenizer has no chat_template; pick a named "
                f"template ({self.field}: llama3 or llama2)"
            )
        if not getattr(tokenizer, "is_fast", False):
            raise self.config_error(
                "template 'tokenizer' needs a fast tokenizer (character "
                "offsets map message spans to tokens); this model only has a slow one"
            )

    def _not_prefix(self, what: str) -> ConfigError:
        return self.config_error(
            "chat template 'tokenizer' (the model's own chat_template) cannot be "
            f"masked reliably: {what}, so assistant turns have no stable span. "
            f"Use a named template instead ({self.field}: llama3 or llama2, see "
            "`lorapipe components chat_template`)"
        )

    def _render(self, messages: Conversation, render: _Renderer,
                train_on: str) -> tuple[str, list[tuple[int, int]]]:
        """The rendered text and the character spans of its trained assistant turns
        (content plus the end-of-turn token(s) closing it)."""
        full = render(messages, False)
        spans = []
        for i in sorted(trained_turns(messages, train_on)):
            before = render(messages[:i], True)
            through = (full if i + 1 == len(messages)
                       else render(messages[: i + 1], False))
            if not through.startswith(before):
                raise self._not_prefix(
                    f"the text before assistant turn {i + 1} plus the generation prompt "
                    "is not a prefix of the text with that turn"
                )
            if not full.startswith(through):
                raise self._not_prefix(
                    f"the conversation up to turn {i + 1} renders differently once later "
                    "turns follow"
                )
            # Whitespace a template puts after the end-of-turn token (e.g. ChatML's "\n")
            # separates turns; it is not part of the reply.
            spans.append((len(before), len(through.rstrip())))
        return full, spans

    def encode_batch(
        self,
        conversations: list[Conversation],
        tokenizer: Any,
        *,
        train_on: str = "all_assistant",
        train_on_inputs: bool = False,
    ) -> list[EncodedConversation]:
        self._check(tokenizer)
        render = _Renderer(tokenizer)
        rendered = [self._render(m, render, train_on) for m in conversations]
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
        encodings = backend.encode_batch([text for text, _ in rendered], add_special_tokens=False)
        out = []
        for encoding, (_, spans) in zip(encodings, rendered, strict=True):
            ids = encoding.ids  # a new Python list at each access
            trainable = [train_on_inputs] * len(ids)
            if not train_on_inputs:
                for start, end in spans:
                    first, stop = token_range(encoding, start, end)
                    trainable[first:stop] = [True] * (stop - first)
            out.append(EncodedConversation(ids, trainable))
        return out

    def generation_prompt(self, messages: Conversation, tokenizer: Any) -> list[int]:
        self._check(tokenizer)
        text = _Renderer(tokenizer)(messages, True)
        return tokenizer(text, add_special_tokens=False)["input_ids"]


@hookimpl
def lorapipe_register_chat_templates(register):  # noqa: ANN001, ANN201 - pluggy hook
    register(TokenizerTemplate)
