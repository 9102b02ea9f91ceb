"""Everything a lorapipe plugin may import; the rest of ``lorapipe`` is internal.

A plugin subclasses one of the component bases, implements its abstract methods, and
registers the class from a hook (see ``lorapipe.hookspecs``)::

    from lorapipe.plugin import FileLoader, RawRecord, hookimpl

    class DialogueLoader(FileLoader):
        name = "dialogue"  # what users write in YAML

        def read_file(self, path):
            ...
            yield RawRecord(str(path), f"{path}:{line}", data={"messages": messages})

    @hookimpl
    def lorapipe_register_loaders(register):
        register(DialogueLoader)

and names the module in its distribution's entry points::

    [project.entry-points."lorapipe.plugins"]
    dialogue = "my_package.dialogue"

The helpers that need torch, transformers or numpy (``generate``, ``paired_bootstrap``,
``adaptable_modules``, ``train_byte_level_bpe``, ``from_pretrained``, ``loss_sum``,
``loaded_names``: the name transformers loads each checkpoint key under) are
imported on first use, so a plugin that only defines a loader does not pay for them when
lorapipe discovers it.

An objective computes its loss from the loop's micro batches; ``loss_sum`` (the summed
next-token cross-entropy of the trained tokens, the output head run on those positions
only) and ``trainable_tokens`` (their count) are ``sft``'s, for objectives built on it.
A preference objective subclasses ``PairObjective`` (``columns = PAIR_COLUMNS``: its micro
batches are then pairs, the chosen rows, then the rejected rows; it counts pairs) and
scores them with ``sequence_logps`` (each side's summed log-probability of its trained
tokens) and ``reference_logps`` (the same with the adapters off); ``pair_metrics``
reports the implicit rewards as ``PAIR_METRICS``. An objective reading a ``desirable``
column gets rated replies (KTO): the examples, then their KL rows (each prompt with the
previous prepared example's reply), and ``desirable`` per example; ``row_logps`` scores rows,
``batch_rows`` selects some, ``adapters_off`` is the reference model.

A plugin loads a model, tokenizer or config with ``from_pretrained(AutoTokenizer, path,
trust_remote_code=run.trust_remote_code)`` (``RunInfo``; ``False`` without one): the
user's ``model.trust_remote_code`` is always passed, so transformers never asks on stdin
whether to run a checkpoint's own code, and its refusal is one line naming that field.

For exporters and evaluators that read what training produced: ``LoraAdapter.load(
run.paths.adapter)`` reads the trained adapter (``config``: peft's ``LoraConfig``;
``updates``: per base module its ``a``, ``b``, ``scale``, ``alpha``, DoRA's ``magnitude``,
``replaced`` biases and ``modules_to_save``), and ``pad_token_id(tokenizer)`` is the id
lorapipe pads batches with, so a plugin scores prepared data (``token_nll``) as the
evaluate stage does.

A file loader reads lines with ``content_lines(path, problem)`` (plain or ``.gz``, each
line at most ``MAX_LINE_BYTES``, longer ones given by their length and never held) and
whole files with ``read_head``, so hostile files cost it no more memory than the built-ins.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from lorapipe.atomic import atomic_directory, atomic_write_text
from lorapipe.authoring.file_loader import FileLoader, FileOptions
from lorapipe.authoring.lines import MAX_LINE_BYTES, Line, content_lines, read_head
from lorapipe.authoring.masking import token_range, trained_text, trained_turns
from lorapipe.authoring.piece_template import Piece, PieceTemplate, alternating_turns
from lorapipe.component import Options, Part
from lorapipe.components import (
    ChatTemplate,
    Conversation,
    EncodedConversation,
    EvalContext,
    Evaluator,
    Exporter,
    Loader,
    Quantizer,
    RawRecord,
    RecordError,
    RunInfo,
    TargetDetector,
    TargetSelection,
    Tools,
    UnrenderableConversation,
)
from lorapipe.errors import ConfigError, UserError
from lorapipe.hookspecs import hookimpl
from lorapipe.model.prepare import CHECKPOINTING_KWARGS, enable_checkpointing, freeze
from lorapipe.objective import (
    PAIR_COLUMNS,
    PAIR_METRICS,
    Objective,
    ObjectiveLoss,
    PairObjective,
)

if TYPE_CHECKING:
    from lorapipe.evaluate.bootstrap import paired_bootstrap
    from lorapipe.evaluate.generate import generate
    from lorapipe.evaluate.nll import bootstrap_ci, token_nll
    from lorapipe.merge.streaming import LoraAdapter
    from lorapipe.model.dtypes import resolve_dtype
    from lorapipe.model.loading import loaded_names
    from lorapipe.model.pretrained import from_pretrained, pad_token_id
    from lorapipe.model.targets import (
        adaptable_modules,
        expert_parameters,
        short_names,
        short_parameter_names,
    )
    from lorapipe.model.tiny_llama import train_byte_level_bpe
    from lorapipe.train.batching import collate_pairs
    from lorapipe.train.distributed import fsdp_launched
    from lorapipe.train.loss import loss_sum, trainable_tokens
    from lorapipe.train.preference import (
        adapters_off,
        batch_rows,
        pair_metrics,
        reference_logps,
        row_logps,
        sequence_logps,
    )

_HEAVY = {
    "generate": "lorapipe.evaluate.generate",
    "paired_bootstrap": "lorapipe.evaluate.bootstrap",
    "adaptable_modules": "lorapipe.model.targets",
    "short_names": "lorapipe.model.targets",
    "expert_parameters": "lorapipe.model.targets",
    "short_parameter_names": "lorapipe.model.targets",
    "token_nll": "lorapipe.evaluate.nll",
    "bootstrap_ci": "lorapipe.evaluate.nll",
    "resolve_dtype": "lorapipe.model.dtypes",
    "loaded_names": "lorapipe.model.loading",
    "fsdp_launched": "lorapipe.train.distributed",
    "loss_sum": "lorapipe.train.loss",
    "trainable_tokens": "lorapipe.train.loss",
    "sequence_logps": "lorapipe.train.preference",
    "collate_pairs": "lorapipe.train.batching",
    "reference_logps": "lorapipe.train.preference",
    "pair_metrics": "lorapipe.train.preference",
    "row_logps": "lorapipe.train.preference",
    "batch_rows": "lorapipe.train.preference",
    "adapters_off": "lorapipe.train.preference",
    "from_pretrained": "lorapipe.model.pretrained",
    "pad_token_id": "lorapipe.model.pretrained",
    "LoraAdapter": "lorapipe.merge.streaming",
    "train_byte_level_bpe": "lorapipe.model.tiny_llama",
}

__all__ = [
    # registering
    "hookimpl",
    # component bases and what they exchange
    "ChatTemplate",
    "Conversation",
    "EncodedConversation",
    "EvalContext",
    "Evaluator",
    "Exporter",
    "Loader",
    "Objective",
    "ObjectiveLoss",
    "PAIR_COLUMNS",
    "PAIR_METRICS",
    "PairObjective",
    "Options",
    "Part",
    "Quantizer",
    "RawRecord",
    "RecordError",
    "RunInfo",
    "TargetDetector",
    "TargetSelection",
    "Tools",
    "UnrenderableConversation",
    # errors that end a command with exit 2 and one clear message
    "ConfigError",
    "UserError",
    # helpers
    "CHECKPOINTING_KWARGS",
    "bootstrap_ci",
    "collate_pairs",
    "enable_checkpointing",
    "freeze",
    "fsdp_launched",
    "loss_sum",
    "adapters_off",
    "batch_rows",
    "pair_metrics",
    "row_logps",
    "reference_logps",
    "resolve_dtype",
    "sequence_logps",
    "short_names",
    "short_parameter_names",
    "expert_parameters",
    "token_nll",
    "token_range",
    "trainable_tokens",
    "trained_turns",
    "FileLoader",
    "FileOptions",
    "Line",
    "MAX_LINE_BYTES",
    "content_lines",
    "read_head",
    "LoraAdapter",
    "Piece",
    "PieceTemplate",
    "adaptable_modules",
    "alternating_turns",
    "atomic_directory",
    "atomic_write_text",
    "from_pretrained",
    "generate",
    "loaded_names",
    "pad_token_id",
    "paired_bootstrap",
    "train_byte_level_bpe",
    "trained_text",
]


def __getattr__(name: str) -> Any:
    if name in _HEAVY:
        return getattr(importlib.import_module(_HEAVY[name]), name)
    raise AttributeError(f"module 'lorapipe.plugin' has no attribute '{name}'")
