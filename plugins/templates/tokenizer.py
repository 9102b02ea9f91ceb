"""The built-in ``tokenizer`` chat template: the model's own ``chat_template``.

The mask comes from the template's own rendering of the whole conversation. For each
trained assistant message, the conversation is rendered once more with that message's
content replaced by a placeholder the conversation does not contain: the text before and
after the placeholder is what the template writes around the reply, so in the real
rendering the reply is exactly what lies between them, wherever the template puts it and
however it renders earlier or later turns (a system prompt folded into a user turn,
``<think>`` scaffolding before the reply, tokens appended after the last message only).
The end-of-turn text is what the template writes after the reply when it ends the
conversation, as far as the real rendering agrees (rendering with the conversation cut
after the reply), without trailing whitespace. Nothing is found by searching the user's
text. Those character spans become token spans through the fast tokenizer's offsets.

A record whose reply the template renders depending on its text, or does not render,
is unrenderable: dropped and counted with its location. A template that renders no
assistant content at all is refused when first used.

Speed: a conversation with ``k`` trained turns needs ``3k + 1`` renders. Through
``apply_chat_template`` each render pays input normalisation and bookkeeping that cost
more than the render itself, so we render with the template transformers compiled, its
globals merged into the variables once (same sandbox, filters and globals, hence the same
text; tests pin that), and tokenize the batch in one call to the Rust tokenizer.
"""

from __future__ import annotations

import os
import re
from functools import cached_property
from typing import Any

from jinja2 import Template, TemplateError

# Private, but it is exactly what apply_chat_template renders with (sandboxed environment,
# raise_exception/strftime_now/tojson/namespace, the {% generation %} tag), cached per
# template string; copying it would drift from the library's security fixes.
from transformers.utils.chat_template_utils import _compile_jinja_template

from lorapipe.plugin import (
    ChatTemplate,
    ConfigError,
    EncodedConversation,
    Options,
    UnrenderableConversation,
    hookimpl,
    token_range,
    trained_turns,
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
        self.tokenizer = tokenizer

    @cached_property
    def added_tokens(self) -> tuple[re.Pattern[str] | None, int]:
        """The tokenizer's added tokens (<|user|>, <|im_end|> ...), which it never splits,
        matched leftmost-longest as it matches them, and the longest one's length (see
        ``_whole_tokens``); built when masking first asks, not for a generation prompt."""
        added = sorted((t for t in self.tokenizer.get_added_vocab() if len(t) > 1), key=len,
                       reverse=True)
        if not added:
            return None, 0
        return re.compile("|".join(map(re.escape, added))), len(added[0])

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
        except (TypeError, ValueError, KeyError, IndexError, AttributeError) as err:
            # A template that needs more than a conversation (tools to iterate, a
            # documents list): the same call fails in apply_chat_template.
            raise UnrenderableConversation(
                f"the chat template failed on it: {type(err).__name__}: {err}") from None


# Private-use characters: never in real text, and untouched by trim/strip filters. Two of
# very different lengths, so a template that writes around a reply by its length shows.
PLACEHOLDERS = ("\ue000lorapipe-reply\ue001", "\ue000" + "lorapipe-reply " * 16 + "\ue001")
_PROBE = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}]


def _with_reply(messages: Conversation, index: int, content: str) -> Conversation:
    out = list(messages)
    out[index] = {**messages[index], "content": content}
    return out


def _around_reply(render: _Renderer, messages: Conversation, index: int,
                  placeholder: str = PLACEHOLDERS[0]) -> tuple[str, str]:
    """The text the template writes before and after assistant message ``index``'s content."""
    marked = render(_with_reply(messages, index, placeholder), False)
    if marked.count(placeholder) != 1:
        raise UnrenderableConversation(
            f"the chat template renders assistant message {index + 1} "
            f"{'not at all' if placeholder not in marked else 'more than once'}")
    head, _, tail = marked.partition(placeholder)
    return head, tail


def _whole_tokens(prefix: str, text: str, render: _Renderer) -> str:
    """``prefix`` of ``text``, cut back to the start of an added token it ends inside.

    The tokenizer never splits its added tokens, so text that ends inside one ends before
    it: Phi-3.5 writes "<|end|>\n<|user|>" when the conversation goes on and
    "<|end|>\n<|endoftext|>" when it ends, which agree up to "<|", the start of the next
    turn's "<|user|>".
    """
    pattern, longest = render.added_tokens
    if pattern is None:
        return prefix
    cut = len(prefix)
    # one straddling the cut starts less than the longest token's length before it
    for match in pattern.finditer(text, max(0, cut - longest + 1), cut + longest - 1):
        if match.start() >= cut:
            break
        if match.end() > cut:
            return prefix[:match.start()]
    return prefix


class TokenizerOptions(Options):
    # Also train what the template writes between the generation prompt and a reply (an
    # empty <think></think> block): a model that should emit it itself learns to.
    train_scaffolding: bool = False


class TokenizerTemplate(ChatTemplate):
    """The model tokenizer's own chat_template, masked from its rendering of the whole
    conversation."""

    name = "tokenizer"
    Options = TokenizerOptions

    def _check(self, tokenizer: Any) -> None:
        if not getattr(tokenizer, "chat_template", None):
            raise self.config_error(
                "the model's tokenizer has no chat_template; name a template for "
                f"{self.field}"
            )
        if not getattr(tokenizer, "is_fast", False):
            raise self.config_error(
                "template 'tokenizer' needs a fast tokenizer (character "
                "offsets map message spans to tokens); this model only has a slow one"
            )

    def _probe(self, render: _Renderer) -> None:
        """Refuse a template that cannot show where a reply is, before any record."""
        try:
            _around_reply(render, _PROBE, 1)
        except UnrenderableConversation as err:
            raise self._unusable(str(err).removeprefix("the chat template ")) from None

    def _unusable(self, what: str) -> ConfigError:
        return self.config_error(
            f"the model's own chat template {what} for a plain user/assistant exchange, so "
            f"there is no assistant reply to train; name another template for {self.field}"
        )

    def _render(self, messages: Conversation, render: _Renderer,
                train_on: str) -> tuple[str, list[tuple[int, int]]]:
        """The rendered text and the character spans of its trained assistant turns
        (content plus the end-of-turn token(s) closing it)."""
        if any("\ue000lorapipe-reply" in m["content"] for m in messages):
            raise UnrenderableConversation("the text contains lorapipe's reply placeholder")
        full = render(messages, False)
        spans = []
        for i in sorted(trained_turns(messages, train_on)):
            head, tail = _around_reply(render, messages, i)
            start, end = len(head), len(full) - len(tail)
            stable = _around_reply(render, messages, i, PLACEHOLDERS[1]) == (head, tail)
            if not (stable and full.startswith(head) and full.endswith(tail) and start <= end):
                raise UnrenderableConversation(
                    f"the chat template renders around assistant message {i + 1} "
                    "differently depending on its text")
            if self.options.train_scaffolding:
                # from the end of the generation prompt, where the model starts writing
                prompt = render(messages[:i], True)
                if full.startswith(prompt) and len(prompt) <= start:
                    start = len(prompt)
            _, closing = _around_reply(render, messages[: i + 1], i)
            # What the template writes after the reply whether or not the conversation goes
            # on, in whole tokens; whitespace after the end-of-turn token (e.g. ChatML's
            # "\n") separates turns.
            agreed = os.path.commonprefix([full[end:], closing])
            end_of_turn = _whole_tokens(agreed, full[end:], render).rstrip()
            spans.append((start, end + len(end_of_turn)))
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
        self._probe(render)
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

    def serving_template(self, tokenizer: Any) -> str | dict[str, str]:
        return tokenizer.chat_template  # the model's own, all of its named variants kept

    def generation_prompt(self, messages: Conversation, tokenizer: Any) -> list[int]:
        self._check(tokenizer)
        text = _Renderer(tokenizer)(messages, True)
        return tokenizer(text, add_special_tokens=False)["input_ids"]


@hookimpl
def lorapipe_register_chat_templates(register):  # noqa: ANN001, ANN201 - pluggy hook
    register(TokenizerTemplate)
