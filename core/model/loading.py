"""Loading the base model, with the quantizer checked first."""

from __future__ import annotations

from transformers import AutoModelForCausalLM, PreTrainedModel

from lorapipe.components import Quantizer
from lorapipe.config import PipelineConfig
from lorapipe.model.dtypes import default_device, resolve_dtype
from lorapipe.models import resolve_model_path
from lorapipe.pretrained import load_pretrained
from lorapipe.registry import Registry


def quantizer_for(config: PipelineConfig, registry: Registry) -> Quantizer:
    """The configured quantizer, instantiated with its validated options."""
    ref = config.model.quantizer
    cls = registry.get("quantizer", ref.name, "model.quantizer.name")
    return cls(ref.options)


def load_base_model(
    config: PipelineConfig,
    registry: Registry,
    *,
    quantize: bool = True,
    device: str | None = None,
) -> PreTrainedModel:
    """The base model on ``device``: quantized by ``model.quantizer``, or with
    ``quantize=False`` in full ``model.dtype`` (evaluation and merging need exact weights).

    The quantizer's ``check_available`` runs before any weight is read.
    """
    device = device or default_device()
    dtype = resolve_dtype(config.model.dtype, device=device)
    if quantize:
        quantizer = quantizer_for(config, registry)
        quantizer.check_available(device)
        kwargs = quantizer.from_pretrained_kwargs(dtype, device)
    else:
        kwargs = {"dtype": dtype}
    kwargs.update(device_map={"": device}, trust_remote_code=config.model.trust_remote_code)
    path = resolve_model_path(config.model.name_or_path)
    model = load_pretrained(AutoModelForCausalLM, path, kwargs)
    model.config.use_cache = False  # the KV cache only costs memory while training
    if quantize and config.adapter.use_dora:
        keep_4bit_layout(model)
    return model


def keep_4bit_layout(model: PreTrainedModel) -> None:
    """Stop bitsandbytes from repacking 4-bit weights for its CPU kernel.

    bitsandbytes 0.50 repacks a ``Linear4bit`` weight in place at its first inference
    forward on a CPU with AVX512-BF16; peft's DoRA then dequantizes the repacked bytes as
    if they were the original layout, so its weight norms, and every output after the
    first evaluation, are wrong (measured: |Δlogit| ≈ 1 at B = 0 on tiny-llama). Keeping
    the layout costs inference speed on CPU only.
    """
    for module in model.modules():
        if hasattr(module, "support_avx512bf16_for_cpu"):
            module.support_avx512bf16_for_cpu = False
