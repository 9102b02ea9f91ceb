"""Model preparation: from a base checkpoint to a model ready to train.

The quantizer decides how the frozen base is loaded, a target detector names the layers
that get adapters, peft injects them, and a report says what is trainable and how much
memory it should take. Training, evaluation and merge import from here only.
"""

from __future__ import annotations

from lorapipe.model.adapters import build_trainable_model, lora_config
from lorapipe.model.dtypes import default_device, resolve_dtype
from lorapipe.model.loading import load_base_model
from lorapipe.model.memory import estimate_memory, memory_snapshot, record_memory
from lorapipe.model.targets import adaptable_modules, select_targets

__all__ = [
    "adaptable_modules",
    "build_trainable_model",
    "default_device",
    "estimate_memory",
    "load_base_model",
    "lora_config",
    "memory_snapshot",
    "record_memory",
    "resolve_dtype",
    "select_targets",
]
