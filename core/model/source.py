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

from lorapipe.errors import UserError
from lorapipe.model.tiny_llama import TINY_LLAMA, build_tiny_llama, ensure_tiny_llama

__all__ = ["TINY_LLAMA", "build_tiny_llama", "ensure_tiny_llama", "refuse_stored_quantized",
           "resolve_model_path"]

# transformers' config class (and import) for the formats it can dequantize on load
_DEQUANTIZE = {"mxfp4": "Mxfp4Config", "fp8": "FineGrainedFP8Config"}


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


def local_model_config(name_or_path: str) -> dict | None:
    """A local model directory's config.json, checked as far as loading it needs: there,
    JSON, and of a ``model_type`` this transformers knows (or shipping its own code in
    ``auto_map``); None for a hub id. Each problem is a config error on
    ``model.name_or_path`` naming the file, found by ``validate`` before any work."""
    from lorapipe.errors import ConfigError

    directory = Path(resolve_model_path(name_or_path))
    if not directory.is_dir():
        return None
    path = directory / "config.json"
    field = "model.name_or_path"
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(field, f"{directory} has no config.json; point it at a Hugging "
                          "Face model directory (config.json, weights, tokenizer)") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ConfigError(field, f"{path} is not valid JSON ({err}); fix or replace it") \
            from None
    if not isinstance(data, dict):
        raise ConfigError(field, f"{path} holds a JSON {type(data).__name__}, not an object")
    from transformers import __version__ as transformers_version
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING_NAMES

    model_type = data.get("model_type")
    if model_type not in CONFIG_MAPPING_NAMES and "auto_map" not in data:
        raise ConfigError(field, f"{path}: model_type {model_type!r} is not one transformers "
                          f"{transformers_version} knows; upgrade transformers, or check the "
                          "checkpoint")
    return data


def model_context(name_or_path: str) -> int | None:
    """The model's context length from its config.json; None when there is no local
    directory to read (a hub id) or the config does not say."""
    data = local_model_config(name_or_path)
    if data is None:
        return None
    data = {**data, **data.get("text_config", {})}  # multimodal configs nest the text model
    return next((int(data[key]) for key in _CONTEXT_KEYS if isinstance(data.get(key), int)),
                None)


def refuse_stored_quantized(name_or_path: str) -> None:
    """Refuse a base stored quantized (gpt-oss's MXFP4 experts, FP8, GPTQ, AWQ ...)
    before any work, saying how to get full-precision weights.

    lorapipe trains against the base's own weights (4-bit NF4 is made from them) and
    merges into them; merging into quantized weights would round the adapter away.
    """
    config = local_model_config(name_or_path)
    if config is None:
        return  # a hub id: transformers reports its own problems
    quant = config.get("quantization_config")
    if not quant:
        return
    method = quant.get("quant_method", "unknown")
    where = Path(resolve_model_path(name_or_path))
    fix = "point model.name_or_path at the unquantized checkpoint"
    if method in _DEQUANTIZE:
        cls = _DEQUANTIZE[method]
        fix = (f"dequantize it once with transformers: python -c \"from transformers import "
               f"AutoModelForCausalLM, AutoTokenizer, {cls}; p = '{where}'; "
               f"m = AutoModelForCausalLM.from_pretrained(p, quantization_config={cls}("
               "dequantize=True), dtype='bfloat16'); m.save_pretrained('DEQUANTIZED'); "
               "AutoTokenizer.from_pretrained(p).save_pretrained('DEQUANTIZED')\" and set "
               "model.name_or_path: DEQUANTIZED")
    raise UserError(
        f"model.name_or_path: {where} is stored quantized ({method}); lorapipe trains from "
        "and merges into full-precision weights (merging into quantized ones would round "
        f"the adapter away): {fix}"
    )
