"""Where one assistant turn's output lies in the whole rendering: its start (content,
reasoning, tool-call markup) and its end (the end-of-turn token(s) closing it)."""

from __future__ import annotations

import os
from functools import cached_property

from lorapipe.plugin import Conversation, Tools, UnrenderableConversation

from .rendering import (
    NEXT,
    PLACEHOLDERS,
    REASONING,
    Renderer,
    end_of_turn,
    locate,
    locate_reply,
    whole_tokens,
)


class Turn:
    """Where assistant message ``index``'s output lies in the whole rendering ``full``."""

    def __init__(self, render: Renderer, messages: Conversation, tools: Tools | None,
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
        head, tail = locate_reply(render, messages, tools, self.index)
        start, end = len(head), len(full) - len(tail)
        stable = locate_reply(render, messages, tools, self.index, PLACEHOLDERS[1]) == (
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
        around = locate(self.render, self.messages, self.tools, self.index, PLACEHOLDERS[0],
                         REASONING)
        if around is None:
            last = locate(self.render, self.messages[:self.index + 1], self.tools,
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
        around = locate(render, messages, tools, i, PLACEHOLDERS[0])
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
        plain = locate(render, [*messages[:i], {"role": "assistant", "content": NEXT}],
                        tools, i, NEXT)
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
        agreed = len(whole_tokens(os.path.commonprefix([self.full, plain]), self.full,
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
        previous = locate(render, messages, tools, i - 1, NEXT)
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
            _, closing = locate_reply(render, messages[:i + 1], tools, i)
            return end + len(end_of_turn(full[end:], closing, render))
        if i == len(messages) - 1:
            return start + len(full[start:].rstrip())
        # Only tool calls, and the conversation goes on: up to where the next message's
        # header begins (what the template writes before it after a plain reply), or as
        # far as the rendering that ends with the turn agrees. Of those that hold the
        # calls, one that ends on a stop token, else the nearer (either can overshoot into
        # the next message's header, or stop short where the two renderings differ).
        ends = []
        around = locate(render, messages, tools, i + 1, NEXT)
        header = self._next_header()
        if around is not None and header is not None and full.startswith(around[0]):
            region = around[0][start:]
            if region.endswith(header):
                ends.append(region[:len(region) - len(header)].rstrip())
        cut = render(messages[:i + 1], False, tools)
        if cut.startswith(full[:start]):
            ends.append(end_of_turn(full[start:], cut[start:], render))
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
                   {**messages[i + 1], "content": NEXT}, *messages[i + 2:]]
        try:
            text = render(variant, False, tools)
            _, closing = locate_reply(render, variant[:i + 1], tools, i)
        except UnrenderableConversation:
            return None
        if text.count(PLACEHOLDERS[0]) != 1 or text.count(NEXT) != 1:
            return None
        after = text[text.index(PLACEHOLDERS[0]) + len(PLACEHOLDERS[0]):]
        between = after[:after.index(NEXT)]
        return between[len(end_of_turn(after, closing, render)):]


