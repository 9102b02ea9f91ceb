"""``lorapipe inspect``: prepared samples with the tokens that train highlighted.

What a user runs first when they doubt the masks: each sample's record as it was trained
(a chat's turns with their tool calls, tool results and reasoning, the tool definitions it
was given; a document; a prompt and its completion), then each token as the text it
decodes to, trained ones (label = the token) in bold green, the others dimmed, with a
boundary between tokens, so a mask that starts one token late or trains a template's
scaffolding is visible at a glance.
"""

from __future__ import annotations

import json
from typing import Any, Literal

from rich.console import Console
from rich.markup import escape
from rich.text import Text

from lorapipe.artifacts import RunPaths
from lorapipe.authoring.masking import trained_turns
from lorapipe.errors import UserError
from lorapipe.manifest import require_intact

IGNORE = -100
Split = Literal["train", "validation", "test"]
_TRAINED, _CONTEXT, _BOUNDARY = "bold green", "dim", "bright_black"
_LABEL = 12  # width of the role column of a chat record


def show_samples(paths: RunPaths, console: Console, *, split: Split = "train", count: int = 3,
                 start: int = 0, ids: bool = False, trust_remote_code: bool = False,
                 train_on: str = "all_assistant", train_on_inputs: bool = False,
                 train_reasoning: bool = True) -> int:
    """Print ``count`` samples of ``split`` from ``start``; returns how many were shown.
    ``trust_remote_code`` is model.trust_remote_code, for data/tokenizer/; ``train_on``,
    ``train_on_inputs`` and ``train_reasoning`` are the data section's, which say the turns
    of a chat record that train."""
    from datasets import load_from_disk
    from transformers import AutoTokenizer

    from lorapipe.model.pretrained import from_pretrained

    directory = {"train": paths.train_data, "validation": paths.validation_data,
                 "test": paths.test_data}[split]
    if not directory.is_dir():
        hint = ("run `lorapipe prepare CONFIG` first" if split == "train" else
                f"this run holds no {split} split (data.{split} in the config)")
        raise UserError(f"{directory} does not exist; {hint}")
    require_intact(paths.data, "run `lorapipe prepare CONFIG` again")
    data = load_from_disk(str(directory))
    tokenizer = from_pretrained(AutoTokenizer, paths.tokenizer,
                                trust_remote_code=trust_remote_code)
    if start >= len(data):
        raise UserError(f"--start {start}: the {split} split has {len(data)} samples "
                        f"(0 to {len(data) - 1})")
    masking = _Masking(train_on, train_on_inputs, train_reasoning)
    shown = data.select(range(start, min(start + count, len(data))))
    for offset, row in enumerate(shown):
        input_ids, labels = row["input_ids"], row["labels"]
        trained = sum(label != IGNORE for label in labels)
        console.rule(f"{split} sample {start + offset}: {trained} of {len(input_ids)} tokens "
                     "trained", style=_BOUNDARY)
        rendered = tokenizer.decode(input_ids, clean_up_tokenization_spaces=False)
        console.print(_record(row, masking, rendered), soft_wrap=True)
        if row.get("rejected_input_ids"):  # a preference pair: both sides' tokens
            console.print("chosen:", style="bold")
            console.print(_render(tokenizer, input_ids, labels, ids), soft_wrap=True)
            console.print("rejected:", style="bold")
            console.print(_render(tokenizer, row["rejected_input_ids"],
                                  row["rejected_labels"], ids), soft_wrap=True)
            continue
        console.print(_render(tokenizer, input_ids, labels, ids), soft_wrap=True)
    console.print(f"[{_TRAINED}]✓ trained[/] [{_CONTEXT}]context (not trained)[/] "
                  f"[{_BOUNDARY}]│ token boundary[/]   {escape(split)}: {len(data)} samples")
    return len(shown)


class _Masking:
    """Which parts of a chat record the data section trains (the tokens say it exactly;
    this marks the record's turns the same way)."""

    def __init__(self, train_on: str, train_on_inputs: bool, train_reasoning: bool) -> None:
        self.train_on, self.inputs, self.reasoning = train_on, train_on_inputs, train_reasoning

    def turns(self, messages: list[dict[str, Any]]) -> set[int]:
        if self.inputs:
            return set(range(len(messages)))
        return trained_turns(messages, self.train_on)


def _record(row: dict[str, Any], masking: _Masking, rendered: str) -> Text:
    """The sample's record, readable: what each kind of record holds, marked as trained
    or context like its tokens."""
    body = json.loads(row["messages"])
    kind = row.get("kind") or "chat"  # data prepared before documents and pairs: chats
    text = Text()
    if kind == "text":
        text.append(f"document of {len(body['text'])} characters, raw text without a chat "
                    "template (a long one is trained in blocks)\n", style=_BOUNDARY)
        return text
    if kind == "completion":
        text.append("prompt/completion pair, no chat template\n", style=_BOUNDARY)
        _line(text, "prompt", body["prompt"], False)
        _line(text, "completion", body["completion"], True)
        return text
    tools = json.loads(row["tools"]) if row.get("tools") else None
    if kind == "preference":
        text.append("preference pair: the prompt, then the chosen and the rejected reply\n",
                    style=_BOUNDARY)
        for message in body["prompt"]:
            _message(text, message, False, masking, rendered)
        for side in ("chosen", "rejected"):
            for message in body[side]:
                _message(text, {**message, "role": side}, True, masking, rendered)
        return text
    if kind == "unpaired":
        verdict = "desirable" if body["label"] else "undesirable"
        text.append(f"unpaired reply, rated {verdict}: the prompt, then the reply\n",
                    style=_BOUNDARY)
        body = body["messages"]
        for index, message in enumerate(body):
            _message(text, message, index in masking.turns(body), masking, rendered)
        return text
    text.append("chat", style=_BOUNDARY)
    if tools:
        text.append(f", {len(tools)} tool definition{'s' if len(tools) != 1 else ''}: ",
                    style=_BOUNDARY)
        text.append(", ".join(_signature(tool) for tool in tools),
                    style=_TRAINED if masking.inputs else _CONTEXT)
    text.append("\n")
    trained = masking.turns(body)
    for index, message in enumerate(body):
        _message(text, message, index in trained, masking, rendered)
    return text


def _signature(tool: dict[str, Any]) -> str:
    """``name(parameter, ...)`` of a tool definition."""
    function = tool.get("function", tool)
    parameters = function.get("parameters")
    properties = parameters.get("properties") if isinstance(parameters, dict) else None
    names = ", ".join(properties) if isinstance(properties, dict) else ""
    return f"{function.get('name')}({names})"


def _message(text: Text, message: dict[str, Any], trained: bool, masking: _Masking,
             rendered: str) -> None:
    """One message: an assistant turn as its reasoning, its text and each tool call (a
    line each), a tool result with the call it answers."""
    role = message["role"]
    if role == "tool":
        answers = f"{message.get('name')} (id {message.get('tool_call_id')}) → "
        _line(text, "tool", answers + message["content"], trained)
        return
    if role != "assistant":
        _line(text, role, message["content"], trained)
        return
    label = "assistant"
    reasoning = message.get("reasoning_content")
    if reasoning:
        shown = reasoning.strip() in rendered
        note = "" if shown else " (the chat template leaves it out of this sample)"
        _line(text, label, f"reasoning{note}: {reasoning}",
              trained and shown and (masking.reasoning or masking.inputs))
        label = ""
    if message.get("content") or not message.get("tool_calls"):
        _line(text, label, message.get("content", ""), trained)
        label = ""
    for call in message.get("tool_calls") or []:
        function = call["function"]
        arguments = json.dumps(function.get("arguments"), ensure_ascii=False)
        _line(text, label, f"call {function['name']} {arguments} (id {call.get('id')})",
              trained)
        label = ""


def _line(text: Text, label: str, content: str, trained: bool) -> None:
    """One labelled line of a record, ``✓`` where it trains; the content's further lines
    indented under it."""
    text.append("  ✓ " if trained else "    ", style=_TRAINED)
    text.append(f"{label:<{_LABEL}}", style="bold")
    indent = "\n" + " " * (_LABEL + 4)
    text.append(content.replace("\n", indent), style=_TRAINED if trained else _CONTEXT)
    text.append("\n")


def _render(tokenizer, input_ids: list[int], labels: list[int], ids: bool) -> Text:  # noqa: ANN001
    text = Text()
    for position, (token, label) in enumerate(zip(input_ids, labels, strict=True)):
        if position:
            text.append("│", style=_BOUNDARY)
        piece = tokenizer.decode([token])
        # whitespace made visible, so a trained leading space or newline shows
        piece = piece.replace(" ", "·").replace("\n", "↵\n").replace("\t", "→")
        text.append(piece, style=_TRAINED if label != IGNORE else _CONTEXT)
        if ids:
            text.append(f"({token})", style=_BOUNDARY)
    return text
