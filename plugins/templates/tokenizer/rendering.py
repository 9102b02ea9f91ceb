"""Rendering conversations with the model's compiled chat template, and locating a
message's fields in the rendering with placeholders (see the package docstring)."""

from __future__ import annotations

import os
import re
from functools import cached_property
from typing import Any, NamedTuple

from jinja2 import Template, TemplateError

# Private, but it is exactly what apply_chat_template renders with (sandboxed environment,
# raise_exception/strftime_now/tojson/namespace, the {% generation %} tag), cached per
# template string; copying it would drift from the library's security fixes.
from transformers.utils.chat_template_utils import _compile_jinja_template

from lorapipe.plugin import Conversation, Tools, UnrenderableConversation


class Rendering(NamedTuple):
    text: str
    spans: list[tuple[int, int]]
    reasoning_dropped: tuple[int, ...]


class Renderer:
    """``apply_chat_template(messages, tools=tools, tokenize=False, ...)`` without its
    per-call overhead: the compiled template and the special-token variables are looked
    up once."""

    def __init__(self, tokenizer: Any, stops: tuple[str, ...] = (),
                 source: str | None = None) -> None:
        self.stops = stops  # the model's stop tokens, longest first
        # get_chat_template picks "default" when a tokenizer ships several named templates,
        # and "tool_use" (where there is one) when given tools, as apply_chat_template does
        self.template: Template = _compile_jinja_template(
            source or tokenizer.get_chat_template())
        self.tool_template: Template = _compile_jinja_template(
            source or tokenizer.get_chat_template(tools=[]))
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

    def __call__(self, messages: Conversation, add_generation_prompt: bool,
                 tools: Tools | None = None) -> str:
        template = self.template if tools is None else self.tool_template
        context = template.new_context(
            {**self.variables, "messages": messages, "tools": tools,
             "add_generation_prompt": add_generation_prompt},
            shared=True,  # the variables already hold the globals
        )
        try:
            return template.environment.concat(template.root_render_func(context))
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
NEXT = "\ue000lorapipe-next\ue001"  # the content of the message after a turn
PROBE = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}]
# Where templates read an assistant turn's reasoning: most, and gpt-oss's.
REASONING = ("reasoning_content", "thinking")


def with_fields(messages: Conversation, index: int, **fields: Any) -> Conversation:
    out = list(messages)
    out[index] = {**messages[index], **fields}
    return out


def locate(render: Renderer, messages: Conversation, tools: Tools | None, index: int,
            placeholder: str, fields: tuple[str, ...] = ("content",)
            ) -> tuple[str, str] | None:
    """The text the template writes before and after message ``index``'s ``fields`` set to
    ``placeholder``; ``None`` where it renders them not at all."""
    marked = render(with_fields(messages, index, **dict.fromkeys(fields, placeholder)), False,
                    tools)
    count = marked.count(placeholder)
    if count > 1:
        raise UnrenderableConversation(
            f"the chat template renders message {index + 1}'s {fields[0]} more than once")
    if not count:
        return None
    head, _, tail = marked.partition(placeholder)
    return head, tail


def locate_reply(render: Renderer, messages: Conversation, tools: Tools | None, index: int,
                  placeholder: str = PLACEHOLDERS[0]) -> tuple[str, str]:
    """The text the template writes before and after assistant message ``index``'s content."""
    around = locate(render, messages, tools, index, placeholder)
    if around is None:
        raise UnrenderableConversation(
            f"the chat template renders assistant message {index + 1} not at all")
    return around


def whole_tokens(prefix: str, text: str, render: Renderer) -> str:
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


def end_of_turn(after: str, closing: str, render: Renderer) -> str:
    """What closes a turn, given ``after``, the rest of the whole rendering, and
    ``closing``, the rest when the conversation ends with the turn: what both write, in
    whole tokens, without trailing whitespace (e.g. ChatML's "\n" between turns); cut
    after the first of the model's stop tokens in it, or extended to one that follows
    (gpt-oss and GLM write different tokens, or none, after a last reply). A stop token
    of whitespace (RWKV World's "\n\n") is kept."""
    agreed = whole_tokens(os.path.commonprefix([after, closing]), after, render)
    found = [(agreed.find(stop), stop) for stop in render.stops if stop in agreed]
    if found:
        index, stop = min(found)
        return agreed[:index + len(stop)]
    agreed = agreed.rstrip()
    rest = after[len(agreed):]
    for stop in render.stops:
        if rest.startswith(stop):
            return agreed + stop
    gap = len(rest) - len(rest.lstrip())
    for stop in render.stops:
        if rest.startswith(stop, gap):
            return agreed + rest[:gap + len(stop)]
    return agreed


def without_tools(render: Renderer, messages: Conversation) -> str | None:
    try:
        return render(messages, False, None)
    except UnrenderableConversation:  # a template that needs its tools
        return None


