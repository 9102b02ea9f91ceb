"""Where a model name from the config becomes a directory transformers can load.

No machine lorapipe is developed or tested on can reach a model hub, so the
engine ships one built-in model, ``tiny-llama``, that is built on first use and
cached. :func:`resolve_model_path` is the single place that knows about it:
everything downstream sees an ordinary Hugging Face model directory and must
not special-case the tiny model.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from lorapipe.model.tiny_llama import TINY_LLAMA, build_tiny_llama, ensure_tiny_llama

__all__ = ["TINY_LLAMA", "build_tiny_llama", "ensure_tiny_llama", "resolve_model_path"]


def resolve_model_path(name_or_path: str) -> str:
    """Return what to pass to ``from_pretrained`` for ``model.name_or_path``.

    ``tiny-llama`` becomes the path of the cached built-in model (built if
    missing); any other string — a local directory or a hub id — is passed
    through so real models work exactly as they do in transformers, with ``~`` and
    environment variables expanded (a hub id has neither).
    """
    if name_or_path == TINY_LLAMA:
        return str(ensure_tiny_llama())
    return os.path.expandvars(os.path.expanduser(name_or_path))


# Where configs of the common architectures keep the longest sequence they were built for.
_CONTEXT_KEYS = ("max_position_embeddings", "n_positions", "max_sequence_length", "seq_length")


def model_context(name_or_path: str) -> int | None:
    """The model's context length from its config.json; None when there is no local
    directory to read (a hub id) or the config does not say."""
    config = Path(resolve_model_path(name_or_path)) / "config.json"
    if not config.is_file():
        return None
    data = json.loads(config.read_text(encoding="utf-8"))
    data = {**data, **data.get("text_config", {})}  # multimodal configs nest the text model
    return next((int(data[key]) for key in _CONTEXT_KEYS if isinstance(data.get(key), int)),
                None)
