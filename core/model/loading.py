"""Loading the base model: quantized for training, exact for merging, or weightless (on
the ``meta`` device) for estimates and streamed merges."""

from __future__ import annotations

from collections.abc import Callable

import torch
from transformers import AutoConfig, AutoModelForCausalLM, PreTrainedModel

from lorapipe.components import Quantizer
from lorapipe.config import ModelConfig
from lorapipe.model.gpu_options import attention_kwargs
from lorapipe.model.pretrained import load_pretrained
from lorapipe.model.source import resolve_model_path


def load_base_model(
    model: ModelConfig,
    *,
    dtype: torch.dtype,
    device: str,
    quantizer: Quantizer | None = None,
) -> PreTrainedModel:
    """The base model on ``device``: as ``quantizer`` loads it, or without one in plain
    ``dtype`` (merging needs the exact weights).

    The quantizer's ``check_available`` runs before any weight is read.
    """
    if quantizer is not None:
        quantizer.check_available(device)
        kwargs = quantizer.from_pretrained_kwargs(dtype, device)
    else:
        kwargs = {"dtype": dtype}
    kwargs.update(device_map={"": device}, trust_remote_code=model.trust_remote_code,
                  **attention_kwargs(model.attn_implementation, device, dtype))
    loaded = load_pretrained(AutoModelForCausalLM, resolve_model_path(model.name_or_path), kwargs)
    loaded.config.use_cache = False  # the KV cache only costs memory while training
    if device == "cpu":
        _keep_4bit_layout(loaded)
    return loaded


def weightless_model(model: ModelConfig) -> PreTrainedModel:
    """The base model's architecture on the ``meta`` device: every module, no weights.

    Raises what transformers raises for an architecture it cannot build this way.
    """
    trust = {"trust_remote_code": model.trust_remote_code}
    model_config = load_pretrained(AutoConfig, resolve_model_path(model.name_or_path), trust)
    # Every tensor created on meta from the start: accelerate's init_empty_weights lets
    # transformers allocate each parameter on the CPU before moving it (measured: the
    # process's data segment grows by 70% of the model's size, untouched but counted
    # against `ulimit -d`, at every call).
    with torch.device("meta"):
        return AutoModelForCausalLM.from_config(model_config, **trust)


def loaded_names(model: PreTrainedModel) -> Callable[[str], str]:
    """The name transformers loads each checkpoint key under in ``model`` (weightless, not
    yet wrapped by peft): its own renamings of the key, then its base-model prefix added or
    dropped. A text model packaged in a multimodal checkpoint loads Qwen3.5's
    ``model.language_model.*`` and Llama 4's ``language_model.model.*`` as ``model.*``."""
    from transformers.conversion_mapping import get_model_conversion_mapping
    from transformers.core_model_loading import WeightRenaming, rename_source_key

    renamings = [transform for transform in get_model_conversion_mapping(model)
                 if isinstance(transform, WeightRenaming)]
    keys = dict.fromkeys(model.state_dict(), True)  # what transformers looks the prefix up in

    def loaded_name(key: str) -> str:
        return rename_source_key(key, renamings, [], model.base_model_prefix, keys)[0]

    return loaded_name


def _keep_4bit_layout(model: PreTrainedModel) -> None:
    """Stop bitsandbytes from repacking 4-bit weights for its CPU kernel.

    bitsandbytes 0.50 repacks a ``Linear4bit`` weight in place at its first inference
    forward on a CPU with AVX512-BF16, and computes with the other layout from then on.
    Training interleaved with evaluation would then run on one layout before the first
    evaluation and on the other after it, so a run resumed from a checkpoint taken after
    an evaluation (a fresh process: original layout) would not train bit for bit like the
    run it continues. Worse, peft's DoRA dequantizes the repacked bytes as if they were the
    original layout, so its weight norms, and every output after the first evaluation,
    are wrong (measured: |Δlogit| ≈ 1 at B = 0 on tiny-llama). Keeping the layout costs
    inference speed on the CPU only; layers of other kinds do not have the attribute.
    """
    for module in model.modules():
        if hasattr(module, "support_avx512bf16_for_cpu"):
            module.support_avx512bf16_for_cpu = False
