"""What an evaluator receives: one model with the adapter, switchable off for the base."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any


@dataclass
class EvalContext:
    """The fine-tuned model (a ``PeftModel``), its tokenizer and chat template, the
    validation set (columns input_ids, attention_mask, labels, messages, source) and the
    run it belongs to.

    The base model is the same object with the adapter switched off (``base()``), so only
    one copy of the weights is ever in memory.
    """

    model: Any
    tokenizer: Any
    template: Any
    dataset: Any
    run: Any = None

    @contextlib.contextmanager
    def base(self) -> Iterator[Any]:
        """The model with every adapter disabled, for the base-model score."""
        with self.model.disable_adapter():
            yield self.model

    def conversations(self) -> list[list[dict[str, str]]]:
        """The validation conversations as message lists (stored as JSON strings)."""
        import json

        return [json.loads(text) for text in self.dataset["messages"]]
