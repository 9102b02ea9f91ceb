"""What an evaluator is handed (``EvalContext``): its own module, as it is data the
evaluate stage builds, not a component; ``lorapipe.components`` and ``lorapipe.plugin``
export it."""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from datasets import Dataset
    from transformers import PreTrainedTokenizerBase

    from lorapipe.components import ChatTemplate, Conversation, RunInfo, Tools


@dataclass
class EvalContext:
    """What an evaluator scores: the fine-tuned model (a ``PeftModel``), its tokenizer and
    chat template, the held-out set (columns input_ids, attention_mask, labels, messages,
    source), and where it may write files.

    The base model is the same object with the adapter switched off (``base()``), so only
    one copy of the weights is ever in memory. ``shared`` lives as long as one evaluation
    and is shared by all evaluators, for work several of them need (generated replies).
    """

    model: Any
    tokenizer: PreTrainedTokenizerBase
    template: ChatTemplate
    dataset: Dataset
    pad_token_id: int
    output_dir: Path | None = None  # eval/ of the run; None outside a run
    run: RunInfo | None = None
    shared: dict[Any, Any] = field(default_factory=dict)

    @contextlib.contextmanager
    def base(self) -> Iterator[Any]:
        """The model with every adapter disabled, for the base-model score."""
        with self.model.disable_adapter():
            yield self.model

    def conversations(self) -> list[Conversation]:
        """The held-out conversations as message lists (stored as JSON strings); documents
        and prompt/completion pairs are not conversations."""
        return [json.loads(text) for text in self._chat_rows("messages")]

    def conversation_tools(self) -> list[Tools | None]:
        """The tool definitions each of ``conversations()`` was trained with (``None``
        where it has none), in the same order: a reply generated without them is not the
        one the model learned to give."""
        return [json.loads(text) if text else None for text in self._chat_rows("tools")]

    def _chat_rows(self, column: str) -> list[Any]:
        data = self.dataset
        kinds = data["kind"] if "kind" in data.column_names else ["chat"] * len(data)
        values = data[column] if column in data.column_names else [None] * len(data)
        return [value for value, kind in zip(values, kinds, strict=True) if kind == "chat"]
