"""Real models' chat templates against an independent reference of what must be trained.

The templates are llama.cpp's collection (``tests/fixtures/chat_templates``, from the
llama-cpp-python source distribution). The reference renders with transformers' public
``apply_chat_template`` and finds each reply by searching for its (test-made, unique) text;
what follows it is the end-of-turn text: what the template writes after that reply when
the conversation ends there, as far as the whole rendering agrees, without trailing
whitespace. The expected mask is every token overlapping those spans.

``python tests/data/real_templates.py`` prints the README's table.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

from lorapipe.components import UnrenderableConversation
from lorapipe.errors import UserError
from lorapipe.plugins.templates.tokenizer import TokenizerTemplate

TEMPLATES = Path(__file__).resolve().parents[1] / "fixtures" / "chat_templates"
SYSTEM = {"role": "system", "content": "You answer in one sentence."}
TURNS = [
    {"role": "user", "content": "Which city is the capital of France?"},
    {"role": "assistant", "content": "Paris is the capital of France."},
    {"role": "user", "content": "And how many legs does a spider have?"},
    {"role": "assistant", "content": "A spider has eight legs."},
]
CONVERSATIONS = {
    "single": TURNS[:2],
    "single+system": [SYSTEM, *TURNS[:2]],
    "multi": TURNS,
    "multi+system": [SYSTEM, *TURNS],
}


def reference_spans(messages: list[dict[str, str]], tokenizer: Any, template: str
                    ) -> tuple[str, list[tuple[int, int]]]:
    """The rendered text and, per assistant reply, the character span to train."""

    def render(conversation: list[dict[str, str]]) -> str:
        return tokenizer.apply_chat_template(conversation, tokenize=False,
                                             chat_template=template)

    full = render(messages)
    spans, cursor = [], 0
    for i, message in enumerate(messages):
        if message["role"] != "assistant":
            continue
        start = full.index(message["content"], cursor)
        end = start + len(message["content"])
        cut = render(messages[: i + 1])
        after = cut[cut.rindex(message["content"]) + len(message["content"]):]
        end_of_turn = os.path.commonprefix([full[end:], after]).rstrip()
        spans.append((start, end + len(end_of_turn)))
        cursor = end
    return full, spans


def check(template: str, messages: list[dict[str, str]], tokenizer: Any) -> str:
    """``trained correctly``, or ``refused: <reason>``; raises AssertionError when lorapipe
    trains anything but the reference's tokens."""
    tokenizer.chat_template = template
    try:
        encoded = TokenizerTemplate(field="data.template").encode(messages, tokenizer)
    except (UnrenderableConversation, UserError) as err:
        return f"refused: {err}".splitlines()[0][:160]
    text, spans = reference_spans(messages, tokenizer, template)
    reference = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    assert encoded.input_ids == reference["input_ids"], "token ids differ from the rendering"
    expected = [any(start < e and s < end for s, e in spans)
                for start, end in reference["offset_mapping"]]
    assert encoded.trainable == expected, [
        tokenizer.decode([t]) for t, a, b in zip(encoded.input_ids, encoded.trainable,
                                                 expected, strict=True) if a != b]
    return "trained correctly"


def main() -> int:
    from transformers import AutoTokenizer

    from lorapipe.model.source import resolve_model_path

    tokenizer = AutoTokenizer.from_pretrained(resolve_model_path("tiny-llama"))
    print("| template | " + " | ".join(CONVERSATIONS) + " |")
    print("|---|" + "---|" * len(CONVERSATIONS))
    for path in sorted(TEMPLATES.glob("*.jinja")):
        cells = []
        for messages in CONVERSATIONS.values():
            try:
                outcome = check(path.read_text(encoding="utf-8"), messages, tokenizer)
            except Exception as err:  # a wrong mask or a template transformers cannot run
                outcome = f"FAILED: {type(err).__name__}: {err}"[:160]
            cells.append("yes" if outcome == "trained correctly" else outcome.replace("|", "/"))
        print(f"| {path.stem} | " + " | ".join(cells) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
