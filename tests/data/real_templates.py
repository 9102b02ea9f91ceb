"""Real models' chat templates on plain conversations, against an independent reference of
what must be trained.

The templates are llama.cpp's collection (``tests/fixtures/chat_templates``, from the
llama-cpp-python source distribution). The reference is ``tool_templates.py``'s, on plain
conversations (no tools): it renders with transformers' public ``apply_chat_template``,
finds each message by searching, in order, for its (test-made, unique) text, and never
compares renderings. A reply is trained from its first word through the first of its
family's stop tokens after its last word (what the family's ``generation_config.json``
lists as ``eos_token_id``, written down per template in ``tool_templates.FAMILIES``),
provided the template writes that before the next message's text; a last reply the
template closes with nothing is trained through its last word. Nothing of the next turn,
nothing before the reply (headers, an empty ``<think></think>``). The expected mask is
every token overlapping those spans.

The tokenizers are real vocabularies (llama.cpp's vocab GGUFs) with the family's markers
as added tokens and its BOS/EOS (``tool_templates.family_tokenizer``); lorapipe is given
the family's stop tokens as it reads them from a real model's ``generation_config.json``.

``python tests/data/real_templates.py`` prints the README's table.
"""

from __future__ import annotations

import sys
from pathlib import Path

from tool_templates import TEMPLATES, judge

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


def check(template_path: Path, conversation: str) -> str:
    """``trained correctly``, or ``refused: <reason>``; raises AssertionError when lorapipe
    trains anything but the reference's tokens, or trains what the reference finds no reply
    in (a template transformers cannot render the conversation with)."""
    return judge(template_path, CONVERSATIONS[conversation], None)


def main() -> int:
    print("| template | " + " | ".join(CONVERSATIONS) + " |")
    print("|---|" + "---|" * len(CONVERSATIONS))
    for path in sorted(TEMPLATES.glob("*.jinja")):
        cells = []
        for name in CONVERSATIONS:
            try:
                outcome = check(path, name)
            except Exception as err:  # a wrong mask, or lorapipe failing
                outcome = f"FAILED: {type(err).__name__}: {err}"[:300]
            cells.append("yes" if outcome == "trained correctly" else outcome.replace("|", "/"))
        print(f"| {path.stem} | " + " | ".join(cells) + " |")
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(TEMPLATES.parents[1]))  # tests/, for llama_cpp_material
    sys.exit(main())
