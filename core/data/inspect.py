"""``lorapipe inspect``: prepared samples with the tokens that train highlighted.

What a user runs first when they doubt the masks: each token is shown as the text it
decodes to, trained ones (label = the token) in bold green, the others dimmed, with a
boundary between tokens, so a mask that starts one token late or trains a template's
scaffolding is visible at a glance.
"""

from __future__ import annotations

from typing import Literal

from rich.console import Console
from rich.markup import escape
from rich.text import Text

from lorapipe.artifacts import RunPaths
from lorapipe.errors import UserError
from lorapipe.manifest import require_intact

IGNORE = -100
Split = Literal["train", "validation", "test"]
_TRAINED, _CONTEXT, _BOUNDARY = "bold green", "dim", "bright_black"


def show_samples(paths: RunPaths, console: Console, *, split: Split = "train", count: int = 3,
                 start: int = 0, ids: bool = False, trust_remote_code: bool = False) -> int:
    """Print ``count`` samples of ``split`` from ``start``; returns how many were shown.
    ``trust_remote_code`` is model.trust_remote_code, for data/tokenizer/."""
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
    shown = data.select(range(start, min(start + count, len(data))))
    for offset, row in enumerate(shown):
        input_ids, labels = row["input_ids"], row["labels"]
        trained = sum(label != IGNORE for label in labels)
        console.rule(f"{split} sample {start + offset}: {trained} of {len(input_ids)} tokens "
                     "trained", style=_BOUNDARY)
        console.print(_render(tokenizer, input_ids, labels, ids), soft_wrap=True)
    console.print(f"[{_TRAINED}]trained[/] [{_CONTEXT}]context (not trained)[/] "
                  f"[{_BOUNDARY}]│ token boundary[/]   {escape(split)}: {len(data)} samples")
    return len(shown)


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
