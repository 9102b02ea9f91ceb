"""Base classes of the component kinds (on ``component.Component``), and the typed
objects components receive.

A component class carries its YAML ``name`` and an ``Options`` pydantic model. The run
plan (``plan.py``) looks each configured name up once, validates the user's options
against ``Options`` and instantiates the class with them and its YAML ``field``, so a
typo fails at ``lorapipe validate`` and every message a component raises can name the
field it was configured at. What a subclass must implement is marked abstract: the
registry refuses a class that leaves one out, naming the methods.

Plugin authors import these through ``lorapipe.plugin``; this module is the engine's.
"""

from __future__ import annotations

from abc import abstractmethod
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from lorapipe.artifacts import RunPaths
from lorapipe.component import Component
from lorapipe.eval_context import EvalContext
from lorapipe.objective import Objective

if TYPE_CHECKING:  # the heavy libraries are imported by the stages that use them
    import torch
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

Conversation = list[dict[str, Any]]
"""Canonical messages: ``{"role": "system" | "user" | "assistant" | "tool", "content": str}``;
an assistant message may add ``tool_calls`` (``[{"id", "type": "function", "function":
{"name", "arguments": dict}}]``) and ``reasoning_content``, a tool message ``tool_call_id``
and ``name``, and any message ``train: false`` (never trained; see ``trained_turns``)."""
Tools = list[dict[str, Any]]
"""A record's tool definitions, as ``apply_chat_template(tools=...)`` takes them."""


# --- loaders --------------------------------------------------------------------------


class RecordError(ValueError):
    """A record that cannot become a training example; ``reason`` is its report key
    (``malformed_json``, ``wrong_type`` ...), ``detail`` says what is wrong with it."""

    def __init__(self, reason: str, detail: str) -> None:
        self.reason = reason
        self.detail = detail
        super().__init__(f"{reason}: {detail}")


@dataclass(frozen=True)
class RawRecord:
    """One record as a loader read it: the parsed object, or why it could not be parsed.

    ``location`` is what a user needs to find it again (``path:line``, ``path:row 7``);
    an unreadable record carries a ``RecordError`` and is counted under its reason in
    ``data/report.json``.
    """

    source: str
    location: str
    data: dict[str, Any] | None = None
    error: RecordError | None = None


class Loader(Component):
    """Reads a source and yields every record in it, good or bad, in order.

    Built once per YAML field that names it (``self.field`` says which). File-based
    loaders subclass ``FileLoader`` and implement ``read_file`` instead.
    """

    kind = "loader"
    plural = "loaders"

    @abstractmethod
    def records(self) -> Iterator[RawRecord]:
        """Every record of the source in order; a bad one as a ``RawRecord`` with an
        ``error``, never by raising (a source that cannot be read at all raises
        ``self.config_error(...)``)."""

    def fingerprint(self) -> str | None:
        """A hash of everything ``records`` would read, so ``prepare`` can reuse its last
        result; ``None`` (the default) means "cannot tell", and the data is always re-read."""
        return None


# --- chat templates -------------------------------------------------------------------


@dataclass(frozen=True)
class EncodedConversation:
    """Token ids of a rendered conversation and, per token, whether the loss covers it."""

    input_ids: list[int]
    trainable: list[bool]
    # Trained assistant turns whose reasoning_content the rendering leaves out (templates
    # that show only the last turn's thinking): data.reasoning_turns decides what then.
    reasoning_dropped: tuple[int, ...] = ()


class UnrenderableConversation(ValueError):
    """A conversation this template cannot express (e.g. two user turns in a row for llama2).

    The engine drops and counts the record; it is a data problem, not a template bug.
    """


class ChatTemplate(Component):
    """Renders conversations to token ids with a trainable mask taken from its structure.

    ``train_on`` picks the assistant turns whose content and closing end-of-turn token(s)
    are trainable (``all_assistant`` or ``last_assistant``); ``train_on_inputs`` makes every
    token trainable. A template whose structure cannot give a reliable mask raises
    ``self.config_error(...)``; one conversation it cannot render raises
    ``UnrenderableConversation``.

    ``renders`` says what beyond plain messages it can express: ``"tools"`` (record-level
    tool definitions, tool calls and tool results: it then takes ``tools=``) and
    ``"reasoning"`` (``reasoning_content``: it then takes ``train_reasoning=``). The engine
    drops, with the reason, every record that needs what a template does not render, and
    passes those keywords only to a template that declares them.
    """

    kind = "chat_template"
    plural = "chat_templates"
    renders: ClassVar[frozenset[str]] = frozenset()

    @abstractmethod
    def encode_batch(
        self,
        conversations: list[Conversation],
        tokenizer: PreTrainedTokenizerBase,
        *,
        train_on: str = "all_assistant",
        train_on_inputs: bool = False,
        **features: Any,
    ) -> list[EncodedConversation]:
        """Encode many conversations at once: tokenizing in batches is what makes it fast.
        ``features`` holds ``tools`` (one list or ``None`` per conversation) and
        ``train_reasoning`` where ``renders`` declares them."""

    def encode(
        self,
        messages: Conversation,
        tokenizer: PreTrainedTokenizerBase,
        *,
        train_on: str = "all_assistant",
        train_on_inputs: bool = False,
        tools: Tools | None = None,
        **features: Any,
    ) -> EncodedConversation:
        if tools is not None:
            features["tools"] = [tools]
        return self.encode_batch(
            [messages], tokenizer, train_on=train_on, train_on_inputs=train_on_inputs,
            **features,
        )[0]

    @abstractmethod
    def generation_prompt(
        self, messages: Conversation, tokenizer: PreTrainedTokenizerBase, **features: Any
    ) -> list[int]:
        """Token ids of the conversation followed by the prompt that starts a reply
        (``tools=`` where ``renders`` has ``"tools"``)."""

    @abstractmethod
    def serving_template(self, tokenizer: PreTrainedTokenizerBase) -> str | dict[str, str]:
        """The Jinja chat template that renders conversations as this template trains on
        them. It replaces the tokenizer's in ``data/tokenizer/``, so ``merged/`` and every
        exported file serve the model in the format it learned."""


# --- target detectors -----------------------------------------------------------------


@dataclass(frozen=True)
class TargetSelection:
    """Module names that get adapters, and why (shown in the parameter report).

    ``parameters`` names fused 3-D expert weights (``experts.gate_up_proj``), which are
    parameters of an experts module rather than linear layers; peft adapts them with its
    ``target_parameters``.
    """

    modules: list[str]
    reason: str
    parameters: list[str] = field(default_factory=list)


class TargetDetector(Component):
    """Names the modules of a model that get LoRA adapters.

    Unless ``adapter.target_detector`` names one, detectors are asked in ascending
    ``priority`` until one answers; generic fallbacks use a high priority. In that
    automatic mode a detector is built with its default options, so one whose options
    have required fields is only used when named.
    """

    kind = "target_detector"
    plural = "target_detectors"
    priority: ClassVar[int] = 100

    @abstractmethod
    def detect(self, model: torch.nn.Module) -> TargetSelection | None:
        """The targets for ``model``, or ``None`` for a model this detector does not
        recognise. ``model`` may be weightless (on the ``meta`` device): look at module
        names and types, not at weights."""


# --- quantizers -----------------------------------------------------------------------


class Quantizer(Component):
    """Decides how the frozen base model is loaded and prepares it for training."""

    kind = "quantizer"
    plural = "quantizers"

    @property
    @abstractmethod
    def quantized(self) -> bool:
        """Whether the loaded linear weights differ from the checkpoint's (rounded to
        fewer bits). Merging then reloads the base without this quantizer, and reports how
        far the merged model is from the quantized one that was trained."""

    @abstractmethod
    def storage_dtype(self, dtype: torch.dtype, device: str) -> torch.dtype:
        """The dtype the frozen linear weights are stored in for a base loaded in ``dtype``
        on ``device``."""

    def check_available(self, device: str) -> None:
        """Raise ``self.config_error(...)`` if this quantizer cannot run on ``device``;
        called before any weight is loaded, so a bad choice fails in seconds."""

    @abstractmethod
    def from_pretrained_kwargs(self, dtype: torch.dtype, device: str) -> dict[str, Any]:
        """Keyword arguments for ``AutoModelForCausalLM.from_pretrained`` (``dtype`` included)."""

    @abstractmethod
    def prepare_for_training(
        self, model: PreTrainedModel, *, gradient_checkpointing: bool
    ) -> PreTrainedModel:
        """Freeze the base and set it up for adapter training; returns the model."""

    @abstractmethod
    def weight_bytes(self, quantizable: int, other: int, dtype: torch.dtype) -> int:
        """Bytes the loaded, prepared base takes: ``quantizable`` parameters of linear
        layers, ``other`` parameters (embeddings, head, norms) — for the memory estimate."""

    def activation_dtype(self, dtype: torch.dtype) -> torch.dtype:
        """The dtype hidden states are kept in while training a base loaded in ``dtype``."""
        return dtype


# --- evaluators -----------------------------------------------------------------------


@dataclass(frozen=True)
class RunInfo:
    """What a component may know about the run it is part of."""

    paths: RunPaths  # the run directory's layout (read it; write only under your own dir)
    base_model: str  # model.name_or_path
    config_hash: str  # hash of the resolved config, as in run.json
    quantizer: str  # name of the quantizer training used
    max_length: int | None = None  # data.max_length: the context the model was trained on
    # model.trust_remote_code: pass it to every from_pretrained (lorapipe.plugin's does)
    trust_remote_code: bool = False


class Evaluator(Component):
    """Scores the base and the fine-tuned model on held-out data.

    ``records``: the record kind it scores (``preference`` for pairs), or ``None`` for
    any; ``validate`` refuses it beside an objective that trains on another kind only.
    """

    kind = "evaluator"
    plural = "evaluators"
    records: ClassVar[str | None] = None

    @abstractmethod
    def evaluate(self, context: EvalContext) -> dict[str, Any]:
        """Return ``{"base": {...}, "finetuned": {...}, "change": {...}}`` (metric →
        number) plus any extra JSON-able detail; it becomes this evaluator's entry in
        ``eval/report.json``. Files go under ``context.output_dir / self.name``."""


# --- exporters ------------------------------------------------------------------------


class Exporter(Component):
    """Writes a deployable artifact from the merged model directory.

    The export stage checks ``merged/`` with every exporter's ``check``, then has each one
    ``export`` into its own ``export/<name>/`` and records in run.json's export summary
    every path ``export`` returned, with its size, and, under ``scores.<name>``, what
    ``scores`` returns afterwards: the exporter's measurements of the files it wrote (the
    gguf exporter's response perplexity of each file beside merged/'s). The run's summary
    line prints scores shaped ``{"split", "merged", "files": {file: {"perplexity",
    "increase"}}}``; any other JSON object is recorded as it is.
    """

    kind = "exporter"
    plural = "exporters"

    def check(self, model_dir: Path) -> None:
        """Raise ``self.config_error(...)`` if this exporter cannot handle the model in
        ``model_dir`` (the base before training, ``merged/`` before export); no work yet."""

    @abstractmethod
    def export(self, merged_dir: Path, out_dir: Path, run: RunInfo | None) -> list[Path]:
        """Write the artifacts into ``out_dir`` and return their paths.

        ``run`` says where the weights came from (for provenance); ``None`` outside a run.
        """

    def scores(self, out_dir: Path) -> dict[str, Any] | None:
        """What ``export`` measured of the files it wrote into ``out_dir``; ``None`` (the
        default) when it measured nothing."""
        return None


# The component kinds, declared once: the registry's hooks and ``lorapipe components``
# come from this.
KINDS: dict[str, type[Component]] = {
    cls.kind: cls
    for cls in (Loader, ChatTemplate, TargetDetector, Quantizer, Objective, Evaluator,
                Exporter)
}
