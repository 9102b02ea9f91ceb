"""The built-in ``tokenizer`` chat template: the model's own ``chat_template``.

The mask comes from rendering the conversation message by message: the text rendered for
the first ``i`` messages plus the generation prompt must be a prefix of the text for the
first ``i + 1`` messages, and the difference is exactly assistant message ``i`` with its
closing end-of-turn token(s). Those character spans become token spans through the fast
tokenizer's offset mapping. A chat template that does not render conversations as such
prefixes (e.g. one that rewrites earlier turns once a later one exists) is refused rather
than masked by guesswork.
"""

from __future__ import annotations

from typing import Any

from jinja2 import TemplateError

from lorapipe import hookimpl
from lorapipe.components import ChatTemplate, EncodedConversation, UnrenderableConversation
from lorapipe.data.masking import mask_from_char_spans, trained_turns
from lorapipe.errors import UserError


def _render(tokenizer: Any, messages: list[dict[str, str]], add_generation_prompt: bool) -> str:
    try:
        return tokenizer.apply_chat_template(
            messages, tokenize=False, add_generation_prompt=add_generation_prompt
        )
    except TemplateError as err:  # e.g. raise_exception('roles must alternate')
        raise UnrenderableConversation(f"the chat template refused it: {err}") from None


def _not_prefix(what: str) -> UserError:
    return UserError(
        "data.template: chat template 'tokenizer' (the model's own chat_template) cannot be "
        f"masked reliably: {what}, so assistant turns have no stable span. "
        "Use a named template instead (data.template: llama3 or llama2, see "
        "`lorapipe components chat_template`)"
    )


class TokenizerTemplate(ChatTemplate):
    """The model tokenizer's own chat_template, masked by rendering message by message."""

    name = "tokenizer"

    def _check(self, tokenizer: Any) -> None:
        if not getattr(tokenizer, "chat_template", None):
            raise UserError(
                "data.template: the model's tokenizer has no chat_template; pick a named "
                "template (data.template: llama3 or llama2)"
            )
        if not getattr(tokenizer, "is_fast", False):
            raise UserError(
                "data.template: template 'tokenizer' needs a fast tokenizer (character "
                "offsets map message spans to tokens); this model only has a slow one"
            )

    def render(self, messages: list[dict[str, str]], tokenizer: Any,
               train_on: str) -> tuple[str, list[tuple[int, int]]]:
        """The rendered text and the character spans of the trained assistant turns."""
        full = _render(tokenizer, messages, False)
        spans = []
        for i in sorted(trained_turns(messages, train_on)):
            before = _render(tokenizer, messages[:i], True)
            through = _render(tokenizer, messages[: i + 1], False)
            if not through.startswith(before):
                raise _not_prefix(
                    f"the text before assistant turn {i + 1} plus the generation prompt is "
                    "not a prefix of the text with that turn"
                )
            if not full.startswith(through):
                raise _not_prefix(
                    f"the conversation up to turn {i + 1} renders differently once later "
                    "turns follow"
                )
            # Whitespace a template puts after the end-of-turn token (e.g. ChatML's "\n")
            # separates turns; it is not part of the reply.
            spans.append((len(before), len(through.rstrip())))
        return full, spans

    def encode_batch(
        self,
        conversations: list[list[dict[str, str]]],
        tokenizer: Any,
        *,
        train_on: str = "all_assistant",
        train_on_inputs: bool = False,
    ) -> list[EncodedConversation]:
        self._check(tokenizer)
        rendered = [self.render(m, tokenizer, train_on) for m in conversations]
        # apply_chat_template tokenizes without adding special tokens: the template itself
        # writes the BOS, so it is never doubled.
        batch = tokenizer(
            [text for text, _ in rendered], add_special_tokens=False,
            return_offsets_mapping=True, return_attention_mask=False,
        )
        return [
            EncodedConversation(ids, mask_from_char_spans(offsets, spans, train_on_inputs))
            for ids, offsets, (_, spans) in zip(
                batch["input_ids"], batch["offset_mapping"], rendered, strict=True
            )
        ]

    def encode(
        self,
        messages: list[dict[str, str]],
        tokenizer: Any,
        *,
        train_on: str = "all_assistant",
        train_on_inputs: bool = False,
    ) -> EncodedConversation:
        return self.encode_batch(
            [messages], tokenizer, train_on=train_on, train_on_inputs=train_on_inputs
        )[0]

    def generation_prompt(self, messages: list[dict[str, str]], tokenizer: Any) -> list[int]:
        self._check(tokenizer)
        text = _render(tokenizer, messages, True)
        return tokenizer(text, add_special_tokens=False)["input_ids"]


@hookimpl
def lorapipe_register_chat_templates(register):  # noqa: ANN001, ANN201 - pluggy hook
    register(TokenizerTemplate)
