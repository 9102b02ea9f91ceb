"""Base classes of the six component kinds (DESIGN.md §2).

A component class carries its YAML ``name`` and an ``Options`` pydantic model; the engine
validates the user's options against ``Options`` as soon as the name is resolved, so a
typo fails at ``lorapipe validate``. Stages instantiate a component with its validated
options and call the methods its kind defines here.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict


class Options(BaseModel):
    """Base of every component's options: unknown keys are errors, not silently ignored."""

    model_config = ConfigDict(extra="forbid")


class Component:
    """Something a user picks by name in YAML."""

    kind: ClassVar[str]
    name: ClassVar[str]
    Options: ClassVar[type[BaseModel]] = Options

    def __init__(self, options: BaseModel | None = None) -> None:
        self.options = options if options is not None else self.Options()


@dataclass(frozen=True)
class RawRecord:
    """One record as a loader read it: the parsed object, or why it could not be parsed.

    ``location`` is what a user needs to find it again (``path:line``, ``path:row 7``).
    ``error`` is ``"<reason>: <detail>"``; the reason (e.g. ``malformed_json``) is the key
    the record is counted under in ``data/report.json``.
    """

    source: str
    location: str
    data: dict[str, Any] | None = None
    error: str | None = None


class Loader(Component):
    """Reads a source and yields every record in it, good or bad, in order."""

    kind = "loader"

    def records(self) -> Iterator[RawRecord]:
        raise NotImplementedError

    def fingerprint(self) -> str | None:
        """A hash of everything ``records`` would read, so ``prepare`` can reuse its last
        result; ``None`` (the default) means "cannot tell", and the data is always re-read."""
        return None


@dataclass(frozen=True)
class EncodedConversation:
    """Token ids of a rendered conversation and, per token, whether the loss covers it."""

    input_ids: list[int]
    trainable: list[bool]


class UnrenderableConversation(ValueError):
    """A conversation this template cannot express (e.g. two user turns in a row for llama2).

    The engine drops and counts the record; it is a data problem, not a template bug.
    """


class ChatTemplate(Component):
    """Renders conversations to token ids with a trainable mask taken from its structure.

    ``train_on`` picks the assistant turns whose content and closing end-of-turn token(s)
    are trainable (``all_assistant`` or ``last_assistant``); ``train_on_inputs`` makes every
    token trainable. A template whose structure cannot give a reliable mask raises
    ``UserError`` naming itself; one conversation it cannot render raises
    ``UnrenderableConversation``.
    """

    kind = "chat_template"

    def encode_batch(
        self,
        conversations: list[list[dict[str, str]]],
        tokenizer: Any,
        *,
        train_on: str = "all_assistant",
        train_on_inputs: bool = False,
    ) -> list[EncodedConversation]:
        """Encode many conversations at once: tokenizing in batches is what makes it fast."""
        raise NotImplementedError

    def encode(
        self,
        messages: list[dict[str, str]],
        tokenizer: Any,
        *,
        train_on: str = "all_assistant",
        train_on_inputs: bool = False,
    ) -> EncodedConversation:
        return self.encode_batch(
            [messages], tokenizer, train_on=train_on, train_on_inputs=train_on_inputs
        )[0]

    def generation_prompt(self, messages: list[dict[str, str]], tokenizer: Any) -> list[int]:
        """Token ids of the conversation followed by the prompt that starts a reply."""
        raise NotImplementedError


@dataclass(frozen=True)
class TargetSelection:
    """Module names that get adapters, and why (shown in the parameter report)."""

    modules: list[str]
    reason: str


class TargetDetector(Component):
    """Names the modules of a model that get LoRA adapters.

    Detectors are asked in ascending ``priority`` until one answers; ``detect`` returns
    ``None`` for a model it does not recognise. Generic fallbacks use a high priority.
    """

    kind = "target_detector"
    priority: ClassVar[int] = 100

    def detect(self, model: Any) -> TargetSelection | None:
        raise NotImplementedError


class Quantizer(Component):
    """Decides how the frozen base model is loaded and prepares it for training."""

    kind = "quantizer"

    def check_available(self, device: str) -> None:
        """Raise ``UserError`` if this quantizer cannot run on ``device``; called before any
        weight is loaded, so a bad choice fails in seconds, not after a long download."""

    def from_pretrained_kwargs(self, dtype: Any, device: str) -> dict[str, Any]:
        """Keyword arguments for ``AutoModelForCausalLM.from_pretrained`` (``dtype`` included)."""
        raise NotImplementedError

    def prepare_for_training(self, model: Any, *, gradient_checkpointing: bool) -> Any:
        """Freeze the base and set it up for adapter training; returns the model."""
        raise NotImplementedError

    def weight_bytes(self, quantizable: int, other: int, dtype: Any) -> int:
        """Bytes the loaded, prepared base takes: ``quantizable`` parameters of linear
        layers, ``other`` parameters (embeddings, head, norms) — for the memory estimate."""
        raise NotImplementedError

    def activation_dtype(self, dtype: Any) -> Any:
        """The dtype hidden states are kept in while training a base loaded in ``dtype``."""
        return dtype


class Evaluator(Component):
    """Scores the base and the fine-tuned model on held-out data."""

    kind = "evaluator"

    def evaluate(self, context: Any) -> dict[str, Any]:
        """Score ``context`` (a ``lorapipe.evaluate.EvalContext``).

        Return ``{"base": {...}, "finetuned": {...}, "change": {...}}`` (metric → number)
        plus any extra JSON-able detail; it becomes this evaluator's entry in
        ``eval/report.json``.
        """
        raise NotImplementedError


class Exporter(Component):
    """Writes a deployable artifact from the merged model directory."""

    kind = "exporter"

    def check(self, model_dir: Path) -> None:
        """Raise ``UserError`` if this exporter cannot handle the model; no work done yet."""

    def export(self, merged_dir: Path, out_dir: Path, context: Any) -> list[Path]:
        """Write the artifacts into ``out_dir`` and return their paths.

        ``context`` is the ``RunContext`` (for provenance), or ``None`` outside a run.
        """
        raise NotImplementedError


KINDS: dict[str, type[Component]] = {
    cls.kind: cls
    for cls in (Loader, ChatTemplate, TargetDetector, Quantizer, Evaluator, Exporter)
}
