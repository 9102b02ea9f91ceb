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
import os
import re
from functools import cached_property
from pathlib import Path
from typing import Any, NamedTuple

from jinja2 import Template, TemplateError
from pydantic import FilePath

# Private, but it is exactly what apply_chat_template renders with (sandboxed environment,
# raise_exception/strftime_now/tojson/namespace, the {% generation %} tag), cached per
# template string; copying it would drift from the library's security fixes.
from transformers.utils.chat_template_utils import _compile_jinja_template

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


class _Rendering(NamedTuple):
    text: str
    spans: list[tuple[int, int]]
    reasoning_dropped: tuple[int, ...]


class _Renderer:
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
_NEXT = "\ue000lorapipe-next\ue001"  # the content of the message after a turn
_PROBE = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}]
# Where templates read an assistant turn's reasoning: most, and gpt-oss's.
REASONING = ("reasoning_content", "thinking")


def _with(messages: Conversation, index: int, **fields: Any) -> Conversation:
    out = list(messages)
    out[index] = {**messages[index], **fields}
    return out


def _around(render: _Renderer, messages: Conversation, tools: Tools | None, index: int,
            placeholder: str, fields: tuple[str, ...] = ("content",)
            ) -> tuple[str, str] | None:
    """The text the template writes before and after message ``index``'s ``fields`` set to
    ``placeholder``; ``None`` where it renders them not at all."""
    marked = render(_with(messages, index, **dict.fromkeys(fields, placeholder)), False, tools)
    count = marked.count(placeholder)
    if count > 1:
        raise UnrenderableConversation(
            f"the chat template renders message {index + 1}'s {fields[0]} more than once")
    if not count:
        return None
    head, _, tail = marked.partition(placeholder)
    return head, tail


def _around_reply(render: _Renderer, messages: Conversation, tools: Tools | None, index: int,
                  placeholder: str = PLACEHOLDERS[0]) -> tuple[str, str]:
    """The text the template writes before and after assistant message ``index``'s content."""
    around = _around(render, messages, tools, index, placeholder)
    if around is None:
        raise UnrenderableConversation(
            f"the chat template renders assistant message {index + 1} not at all")
    return around


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


def _end_of_turn(after: str, closing: str, render: _Renderer) -> str:
    """What closes a turn, given ``after``, the rest of the whole rendering, and
    ``closing``, the rest when the conversation ends with the turn: what both write, in
    whole tokens, without trailing whitespace (e.g. ChatML's "\n" between turns); cut
    after the first of the model's stop tokens in it, or extended to one that follows
    (gpt-oss and GLM write different tokens, or none, after a last reply)."""
    agreed = _whole_tokens(os.path.commonprefix([after, closing]), after, render).rstrip()
    found = [(agreed.find(stop), stop) for stop in render.stops if stop in agreed]
    if found:
        index, stop = min(found)
        return agreed[:index + len(stop)]
    rest = after[len(agreed):]
    gap = len(rest) - len(rest.lstrip())
    for stop in render.stops:
        if rest.startswith(stop, gap):
            return agreed + rest[:gap + len(stop)]
    return agreed


def _without_tools(render: _Renderer, messages: Conversation) -> str | None:
    try:
        return render(messages, False, None)
    except UnrenderableConversation:  # a template that needs its tools
        return None


class _Turn:
    """Where assistant message ``index``'s output lies in the whole rendering ``full``."""

    def __init__(self, render: _Renderer, messages: Conversation, tools: Tools | None,
                 full: str, index: int, scaffolding: bool) -> None:
        self.render, self.messages, self.tools = render, messages, tools
        self.full, self.index, self.scaffolding = full, index, scaffolding
        self.message = messages[index]
        self.number = index + 1

    def _unrenderable(self, what: str) -> UnrenderableConversation:
        return UnrenderableConversation(
            f"the chat template renders {what} of assistant message {self.number} "
            "differently depending on its text")

    @cached_property
    def content(self) -> tuple[int, int] | None:
        """The content's character span; ``None`` for a turn of only tool calls."""
        if not self.message["content"] and self.message.get("tool_calls"):
            return None
        render, messages, tools, full = self.render, self.messages, self.tools, self.full
        head, tail = _around_reply(render, messages, tools, self.index)
        start, end = len(head), len(full) - len(tail)
        stable = _around_reply(render, messages, tools, self.index, PLACEHOLDERS[1]) == (
            head, tail)
        if not (stable and full.startswith(head) and full.endswith(tail) and start <= end):
            raise self._unrenderable("the text around")
        return start, end

    @cached_property
    def prompt_end(self) -> int | None:
        """Where the generation prompt for this turn ends in the whole rendering; ``None``
        where the template renders the history differently once the turn follows."""
        try:
            prompt = self.render(self.messages[:self.index], True, self.tools)
        except UnrenderableConversation:
            return None
        return len(prompt) if self.full.startswith(prompt) else None

    def reasoning_start(self) -> int | None:
        """Where the turn's reasoning text starts; ``None`` without reasoning or where the
        whole rendering leaves it out (it must show when the turn is the last)."""
        if not self.message.get("reasoning_content"):
            return None
        around = _around(self.render, self.messages, self.tools, self.index, PLACEHOLDERS[0],
                         REASONING)
        if around is None:
            last = _around(self.render, self.messages[:self.index + 1], self.tools,
                           self.index, PLACEHOLDERS[0], REASONING)
            if last is None:
                raise UnrenderableConversation(
                    f"the chat template does not render reasoning_content (assistant message "
                    f"{self.number}); use a model whose template does, or write the "
                    "reasoning into the content the way this template expects it")
            return None
        if not self.full.startswith(around[0]):
            raise self._unrenderable("the reasoning")
        return len(around[0])

    def start(self, reasoning: int | None) -> int:
        """Where the trained span begins: where the model starts writing after the
        generation prompt when it writes reasoning (its think markers included) or
        ``train_scaffolding`` asks; else at its content, or at the markup of its calls."""
        output = self._output_start()
        if reasoning is None and not self.scaffolding:
            return output
        first = min(output, reasoning) if reasoning is not None else output
        prompt = self.prompt_end
        return prompt if prompt is not None and prompt <= first else first

    def _output_start(self) -> int:
        if self.content is not None:
            return self.content[0]
        start = self._calls_start()
        return start + len(self.full[start:]) - len(self.full[start:].lstrip())

    def _calls_start(self) -> int:
        # Only tool calls. A template that writes the content before the calls shows where
        # they start when given content (and the calls are not in the text before it),
        # past the added tokens that close the empty content (Kimi K3's
        # "<|close|>response<|sep|>"), as far as the rendering without calls agrees.
        render, messages, tools, i = self.render, self.messages, self.tools, self.index
        around = _around(render, messages, tools, i, PLACEHOLDERS[0])
        name = self.message["tool_calls"][0]["function"]["name"]
        if around is not None and self.full.startswith(around[0]):
            history = render(messages[:i], False, tools)
            if around[0].count(name) == history.count(name):
                return self._past_empty_content(len(around[0]))
        # Else after the generation prompt, past what the template writes there before a
        # plain reply (an empty think block).
        prompt = self.prompt_end if self.prompt_end is not None else self._header_end()
        if prompt is None:
            raise UnrenderableConversation(
                f"the chat template renders the conversation before assistant message "
                f"{self.number} differently once its tool calls follow")
        plain = _around(render, [*messages[:i], {"role": "assistant", "content": _NEXT}],
                        tools, i, _NEXT)
        if plain is None or not plain[0].startswith(self.full[:prompt]):
            return prompt
        scaffold = plain[0][prompt:]
        return prompt + len(scaffold) if self.full.startswith(scaffold, prompt) else prompt

    def _past_empty_content(self, start: int) -> int:
        without = {key: value for key, value in self.message.items() if key != "tool_calls"}
        try:
            plain = self.render([*self.messages[:self.index], without,
                                 *self.messages[self.index + 1:]], False, self.tools)
        except UnrenderableConversation:
            return start
        agreed = len(_whole_tokens(os.path.commonprefix([self.full, plain]), self.full,
                                   self.render))
        pattern, _ = self.render.added_tokens
        if agreed <= start or pattern is None:
            return start
        ends = [match.end() for match in pattern.finditer(self.full, start, agreed)]
        return agreed if ends and ends[-1] == agreed else start

    def _header_end(self) -> int | None:
        """Where the header that opens this turn ends: the text the generation prompt adds,
        found after the previous message's content (for templates that write the history
        a little differently once it goes on, e.g. a newline after the last tool result)."""
        render, messages, tools, i = self.render, self.messages, self.tools, self.index
        if i == 0:
            return None
        history = render(messages[:i], False, tools)
        prompt = render(messages[:i], True, tools)
        previous = _around(render, messages, tools, i - 1, _NEXT)
        if not prompt.startswith(history) or len(prompt) == len(history) or previous is None \
                or not self.full.startswith(previous[0]):
            return None
        header = prompt[len(history):]
        at = self.full.find(header, len(previous[0]))
        return at + len(header) if at >= 0 else None

    def end(self, start: int) -> int:
        """Where the trained span ends: after the end-of-turn token(s) closing the turn."""
        render, messages, tools, i, full = (self.render, self.messages, self.tools,
                                            self.index, self.full)
        if self.content is not None:
            end = self.content[1]
            _, closing = _around_reply(render, messages[:i + 1], tools, i)
            return end + len(_end_of_turn(full[end:], closing, render))
        if i == len(messages) - 1:
            return start + len(full[start:].rstrip())
        # Only tool calls, and the conversation goes on: up to where the next message's
        # header begins (what the template writes before it after a plain reply), or as
        # far as the rendering that ends with the turn agrees. Of those that hold the
        # calls, one that ends on a stop token, else the nearer (either can overshoot into
        # the next message's header, or stop short where the two renderings differ).
        ends = []
        around = _around(render, messages, tools, i + 1, _NEXT)
        header = self._next_header()
        if around is not None and header is not None and full.startswith(around[0]):
            region = around[0][start:]
            if region.endswith(header):
                ends.append(region[:len(region) - len(header)].rstrip())
        cut = render(messages[:i + 1], False, tools)
        if cut.startswith(full[:start]):
            ends.append(_end_of_turn(full[start:], cut[start:], render))
        held = [end for end in ends if self._holds_calls(end)]
        if not held:
            raise UnrenderableConversation(
                f"the chat template ends assistant message {self.number}'s tool calls where "
                "lorapipe cannot tell them from the next message")
        stopped = [end for end in held if end.endswith(render.stops)] if render.stops else []
        return start + min(map(len, stopped or held))

    def _holds_calls(self, text: str) -> bool:
        """Whether ``text`` names each of the turn's tool calls."""
        names = [c["function"]["name"] for c in self.message.get("tool_calls", ())]
        return all(text.count(name) >= names.count(name) for name in names)

    def check_calls(self, start: int, end: int) -> None:
        """Refuse a turn whose trained span lacks one of its calls (a template that
        renders only the first of parallel calls would teach the model to drop them)."""
        if not self._holds_calls(self.full[start:end]):
            raise UnrenderableConversation(
                f"the chat template does not render every tool call of assistant message "
                f"{self.number} in its turn")

    def _next_header(self) -> str | None:
        """What the template writes between a plain reply in this place, its end-of-turn
        included, and the next message's content; ``None`` where it cannot render one."""
        render, messages, tools, i = self.render, self.messages, self.tools, self.index
        plain = {key: value for key, value in self.message.items()
                 if key not in ("tool_calls", "reasoning_content")}
        variant = [*messages[:i], {**plain, "content": PLACEHOLDERS[0]},
                   {**messages[i + 1], "content": _NEXT}, *messages[i + 2:]]
        try:
            text = render(variant, False, tools)
            _, closing = _around_reply(render, variant[:i + 1], tools, i)
        except UnrenderableConversation:
            return None
        if text.count(PLACEHOLDERS[0]) != 1 or text.count(_NEXT) != 1:
            return None
        after = text[text.index(PLACEHOLDERS[0]) + len(PLACEHOLDERS[0]):]
        between = after[:after.index(_NEXT)]
        return between[len(_end_of_turn(after, closing, render)):]


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

    def _renderer(self, tokenizer: Any) -> _Renderer:
        self._check(tokenizer)
        stops = self.options.stop_tokens
        if stops is None:
            stops = model_stops(tokenizer)
        return _Renderer(tokenizer, tuple(sorted(stops, key=len, reverse=True)), self._source)

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

    def _probe(self, render: _Renderer) -> None:
        """Refuse a template that cannot show where a reply is, before any record (with
        an empty tools list if it only renders with one, as tool-use templates do)."""
        try:
            _around_reply(render, _PROBE, None, 1)
        except UnrenderableConversation as err:
            try:
                _around_reply(render, _PROBE, [], 1)
            except UnrenderableConversation:
                raise self._unusable(str(err).removeprefix("the chat template ")) from None

    def _unusable(self, what: str) -> ConfigError:
        return self.config_error(
            f"the model's own chat template {what} for a plain user/assistant exchange, so "
            f"there is no assistant reply to train; name another template for {self.field}"
        )

    def _render(self, messages: Conversation, tools: Tools | None, render: _Renderer,
                train_on: str, train_reasoning: bool) -> _Rendering:
        """The rendered text, the character spans of its trained assistant turns (what
        the model writes: content, tool calls, reasoning where trained, plus the
        end-of-turn token(s) closing it), and the turns whose reasoning it leaves out."""
        if "\ue000lorapipe-" in json.dumps(messages, ensure_ascii=False):
            raise UnrenderableConversation("the text contains lorapipe's reply placeholder")
        messages = [{**m, "thinking": m["reasoning_content"]} if "reasoning_content" in m
                    else m for m in messages]
        full = render(messages, False, tools)
        if tools and full == _without_tools(render, messages):
            raise UnrenderableConversation("the chat template does not render the record's "
                                           "tools (their definitions would not be trained on)")
        spans, dropped = [], []
        for i in sorted(trained_turns(messages, train_on)):
            turn = _Turn(render, messages, tools, full, i, self.options.train_scaffolding)
            reasoning = turn.reasoning_start()
            if reasoning is None and messages[i].get("reasoning_content"):
                dropped.append(i)
            start = turn.start(reasoning if train_reasoning else None)
            end = turn.end(start)
            turn.check_calls(start, end)
            spans.append((start, end))
        return _Rendering(full, spans, tuple(dropped))

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
