"""A text model packaged in a multimodal checkpoint, as Qwen3.5, Llama 4 and Gemma 3/4 are
released: the text model under ``model.language_model.*`` beside a vision tower (and, for
Qwen3.5, a multi-token-prediction block). Its GGUF is the text model's, as llama.cpp's
converter writes it by default (the vision part would be an mmproj file of its own, which
this exporter does not write).

Which checkpoint tensors make the text model, and under which names, is what transformers
does when it loads the text model's causal LM from such a checkpoint: its own renaming of
the keys, and the tensors that land in no module of that model left out.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from .base import CONVERT

TextKeys = Callable[[str], "str | None"]


def packaged_text_type(raw: dict[str, Any]) -> str | None:
    """The text model's type of a packaged checkpoint's config.json, else None."""
    text = raw.get("text_config")
    return text.get("model_type") if isinstance(text, dict) else None


def text_model(model_dir: Path) -> tuple[dict[str, Any], TextKeys]:
    """The text model's config (as transformers completes it) and the rule that names each
    checkpoint key as the text model does (None: not part of it)."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    from lorapipe.plugin import UserError, from_pretrained, loaded_names

    config = from_pretrained(AutoConfig, model_dir, trust_remote_code=False).get_text_config()
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    loaded_name = loaded_names(model)
    modules = dict(model.named_modules())

    def text_key(key: str) -> str | None:
        renamed = loaded_name(key)
        path = renamed.split(".")[:-1]
        # kept if it lands in a module of the text model: its own, or one below the root
        # (the stack a fused expert loads per-expert tensors into); a vision tower or an
        # MTP block lands in none
        inside = ".".join(path) in modules or any(
            ".".join(path[:depth]) in modules for depth in range(2, len(path)))
        return renamed if inside else None

    inputs = model.get_input_embeddings()
    embedding = f"{next(n for n, m in modules.items() if m is inputs)}.weight"
    if not any(text_key(key) == embedding for key in _checkpoint_keys(model_dir)):
        raise UserError(f"{model_dir}: a multimodal checkpoint whose text model's tensors "
                        f"(its {embedding}) transformers' renaming does not find; the GGUF "
                        f"exporter cannot tell them apart. Convert with llama.cpp: {CONVERT}")
    return config.to_dict(), text_key


def _checkpoint_keys(model_dir: Path) -> list[str]:
    from safetensors import safe_open

    keys = []
    for file in sorted(model_dir.glob("*.safetensors")):
        with safe_open(file, framework="pt") as handle:
            keys += list(handle.keys())  # noqa: SIM118 - safe_open is not a mapping
    return keys
