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
``adaptable_modules``, ``train_byte_level_bpe``, ``from_pretrained``) are imported on first
use, so a plugin that only defines a loader does not pay for them when lorapipe discovers it.

A plugin loads a model, tokenizer or config with ``from_pretrained(AutoTokenizer, path,
trust_remote_code=run.trust_remote_code)`` (``RunInfo``; ``False`` without one): the
user's ``model.trust_remote_code`` is always passed, so transformers never asks on stdin
whether to run a checkpoint's own code, and its refusal is one line naming that field.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from lorapipe.atomic import atomic_directory, atomic_write_text
from lorapipe.components import (
    ChatTemplate,
    Conversation,
    EncodedConversation,
    EvalContext,
    Evaluator,
    Exporter,
    Loader,
    Options,
    Quantizer,
    RawRecord,
    RecordError,
    RunInfo,
    TargetDetector,
    TargetSelection,
    UnrenderableConversation,
)
from lorapipe.data.files import FileLoader, FileOptions
from lorapipe.data.masking import trained_text
from lorapipe.data.piece_template import Piece, PieceTemplate, alternating_turns
from lorapipe.errors import ConfigError, UserError
from lorapipe.hookspecs import hookimpl

if TYPE_CHECKING:
    from lorapipe.evaluate.bootstrap import paired_bootstrap
    from lorapipe.evaluate.generate import generate
    from lorapipe.model.pretrained import from_pretrained
    from lorapipe.model.targets import adaptable_modules
    from lorapipe.model.tiny_llama import train_byte_level_bpe

_HEAVY = {
    "generate": "lorapipe.evaluate.generate",
    "paired_bootstrap": "lorapipe.evaluate.bootstrap",
    "adaptable_modules": "lorapipe.model.targets",
    "from_pretrained": "lorapipe.model.pretrained",
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
    "Options",
    "Quantizer",
    "RawRecord",
    "RecordError",
    "RunInfo",
    "TargetDetector",
    "TargetSelection",
    "UnrenderableConversation",
    # errors that end a command with exit 2 and one clear message
    "ConfigError",
    "UserError",
    # helpers
    "FileLoader",
    "FileOptions",
    "Piece",
    "PieceTemplate",
    "adaptable_modules",
    "alternating_turns",
    "atomic_directory",
    "atomic_write_text",
    "from_pretrained",
    "generate",
    "paired_bootstrap",
    "train_byte_level_bpe",
    "trained_text",
]


def __getattr__(name: str) -> Any:
    if name in _HEAVY:
        return getattr(importlib.import_module(_HEAVY[name]), name)
    raise AttributeError(f"module 'lorapipe.plugin' has no attribute '{name}'")
