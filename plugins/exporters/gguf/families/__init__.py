"""What a GGUF file needs from a Hugging Face directory, family by family.

``base`` holds :class:`Family`; each module beside it the families llama.cpp's converter
treats alike (``llama``: permuted Q/K; ``dense``: weights as they are; ``gemma``; ``phi``;
``moe``: stacked experts; ``llama4``: Llama 4's fixed layer patterns; ``hybrid``:
convolution and Mamba layers; ``qwen35``: linear attention). This module picks the family
of a model directory and refuses, before any tensor is read, anything else, naming what
was found and the converter command to run instead.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from lorapipe.plugin import UserError

from .base import CONVERT, Family, Source, llama3_rope_factors, permute_qk
from .dense import Cohere2, Exaone4, Glm4, Olmo2, Qwen2, Qwen3, SeedOss
from .gemma import Gemma2, Gemma3, Gemma4
from .hybrid import GraniteHybrid, Lfm2
from .llama import Granite, Llama, SmolLM3
from .llama4 import Llama4
from .moe import DeepseekV3, GptOss, Qwen3Moe
from .packaged import packaged_text_type, text_model
from .phi import Phi3
from .qwen35 import Qwen35, Qwen35Moe

__all__ = ["CONVERT", "FAMILIES", "SUPPORTED_MODEL_TYPES", "Family", "Source",
           "llama3_rope_factors",
           "model_family", "permute_qk", "read_config"]

FAMILIES: tuple[type[Family], ...] = (
    Llama, Qwen2, Qwen3, Gemma2, Gemma3, Phi3,
    Granite, SmolLM3, Olmo2, SeedOss, Exaone4, Cohere2, Glm4, Lfm2, Qwen3Moe, GptOss,
    Gemma4, DeepseekV3, GraniteHybrid, Llama4, Qwen35, Qwen35Moe,
)
SUPPORTED_MODEL_TYPES = tuple(t for family in FAMILIES for t in family.model_types)


def read_config(model_dir: Path) -> dict[str, Any]:
    """``config.json`` as transformers completes it (defaults filled in, RoPE normalised).

    llama.cpp's converter reads the same completed dictionary, so both see e.g. the
    ``head_dim`` a config leaves implicit.
    """
    from transformers import AutoConfig

    from lorapipe.plugin import from_pretrained

    path = model_dir / "config.json"
    if not path.is_file():
        raise UserError(
            f"{path}: not found; the GGUF exporter needs a Hugging Face model directory"
        )
    raw = json.loads(path.read_text(encoding="utf-8"))
    if raw.get("model_type") not in SUPPORTED_MODEL_TYPES:
        return raw  # to be refused by name; transformers may not even know the type
    # transformers' own class of a family the exporter knows, never the checkpoint's code
    return from_pretrained(AutoConfig, model_dir, trust_remote_code=False).to_dict()


def model_family(model_dir: Path) -> Family:
    """The family of the model in ``model_dir`` (of its text model, when a multimodal
    checkpoint packages one); refuse one the exporter cannot write."""
    hp = read_config(model_dir)
    where = model_dir / "config.json"
    text_key = None
    if (hp.get("model_type") not in SUPPORTED_MODEL_TYPES
            and packaged_text_type(hp) in SUPPORTED_MODEL_TYPES):
        hp, text_key = text_model(model_dir)
    model_type = hp.get("model_type")
    for family in FAMILIES:
        if model_type in family.model_types:
            found = family(hp, where)
            found.packaged = text_key
            return found
    raise UserError(
        f"{where}: GGUF export supports model_type {', '.join(SUPPORTED_MODEL_TYPES)}; got "
        f"model_type {model_type!r} ({', '.join(hp.get('architectures') or ['?'])}). Remove "
        f"the gguf exporter from export.exporters and, after the run, convert with "
        f"llama.cpp: {CONVERT}"
    )
