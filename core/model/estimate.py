"""How much memory a run should take, before any weight is loaded.

The estimate comes from the model's config alone (the model is built on the ``meta``
device, so parameter counts and adapter targets are exact for any architecture), so a run
that cannot fit fails in seconds with suggestions instead of an out-of-memory error an
hour later. What the run then takes is measured by ``memory.py``.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import nn
from transformers import PreTrainedModel

from lorapipe.components import Quantizer
from lorapipe.config import AdapterConfig, PipelineConfig
from lorapipe.model.memory import device_capacity
from lorapipe.model.setup import ModelSetup
from lorapipe.model.targets import (
    LINEAR_TYPES,
    ChosenTargets,
    adaptable_modules,
    expert_parameters,
    matches_target,
    router_modules,
)
from lorapipe.units import format_bytes

# AdamW keeps two fp32 moments per trainable weight; the 8-bit variants two bytes.
_OPTIMIZER_BYTES = {"adamw": 8, "adamw_8bit": 2, "paged_adamw_8bit": 2}
# Activations held per token and decoder layer at the backward peak, in units of
# hidden_size and intermediate_size: norms, q/k/v before and after RoPE, attention output,
# residuals, one LoRA-dropout copy of the input per adapted layer, and the gradients in
# flight (~24 h); gate, up, activation, product and their gradients (~12 i). Logits, their
# loss softmax and the gradients of both in fp32 take ~8 vocabulary-sized copies. Both were
# calibrated against measured peak RSS of LoRA/QLoRA steps on tiny-llama (CPU, fp32):
# the estimate lands within 0.8-1.3x of it (tests/model/test_memory.py checks 0.5-2x).
_PER_TOKEN_HIDDEN, _PER_TOKEN_INTERMEDIATE = 24, 12
_LOGIT_COPIES = 8


@dataclass(frozen=True)
class ParamCounts:
    """What the estimate needs to know about a model."""

    quantizable: int  # weights of adaptable linear layers: what a quantizer compresses
    other: int  # embeddings, output head, norms, biases, fused experts
    experts: int  # fused 3-D expert weights (in ``other``: 4-bit quantizers leave them)
    adapter: int  # LoRA A/B (and DoRA magnitude) parameters for the chosen targets
    saved: int  # parameters of adapter.modules_to_save (trained in full)
    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    vocab_size: int


def count_parameters(model: PreTrainedModel, adapter_config: AdapterConfig,
                     targets: ChosenTargets) -> ParamCounts:
    """Exact counts from a (weightless) instance of the model and the chosen targets."""
    model_config = model.config
    linear = {**adaptable_modules(model), **router_modules(model)}
    quantizable = sum(m.weight.numel() for m in linear.values()
                      if isinstance(m, LINEAR_TYPES))
    total = sum(p.numel() for p in model.parameters())
    r, dora = adapter_config.r, adapter_config.use_dora
    adapter = 0
    for name, module in model.named_modules():
        weight = getattr(module, "weight", None)
        if isinstance(weight, torch.Tensor) and weight.dim() == 2 and any(
            matches_target(name, key) for key in targets.modules
        ):
            adapter += r * sum(weight.shape) + (_out_features(module) if dora else 0)
    experts = expert_parameters(model)
    for name, param in experts.items():
        if any(matches_target(name, key) for key in targets.parameters):
            count, *features = param.shape  # one rank-r pair per expert
            adapter += r * count * sum(features)
    saved = sum(
        p.numel()
        for name, module in model.named_modules()
        if any(matches_target(name, key) for key in adapter_config.modules_to_save)
        for p in module.parameters()
    )
    hidden = model_config.hidden_size
    return ParamCounts(
        quantizable=quantizable,
        other=total - quantizable,
        experts=sum(p.numel() for p in experts.values()),
        adapter=adapter,
        saved=saved,
        hidden_size=hidden,
        intermediate_size=getattr(model_config, "intermediate_size", None)
        or getattr(model_config, "n_inner", None) or 4 * hidden,
        num_layers=model_config.num_hidden_layers,
        num_heads=model_config.num_attention_heads,
        vocab_size=model_config.vocab_size,
    )


def _out_features(module: nn.Module) -> int:
    weight = module.weight
    return weight.shape[1] if type(module).__name__ == "Conv1D" else weight.shape[0]


def estimate_memory(setup: ModelSetup, counts: ParamCounts) -> dict[str, Any]:
    """Bytes for weights, adapters, gradients, optimizer state and activations of one
    micro batch of ``train.micro_batch_size`` × ``data.max_length`` tokens, with and
    without gradient checkpointing; plus the device's capacity, whether the configured
    run fits, and single changes that would make it fit when it does not."""
    device, dtype = setup.device, setup.dtype
    estimate = _estimate(setup.config, counts, setup.quantizer, device, dtype)
    capacity = device_capacity(device)
    estimate["capacity"] = capacity
    estimate["fits"] = estimate["total_bytes"] <= capacity["available_bytes"]
    estimate["suggestions"] = [] if estimate["fits"] else _suggestions(
        setup, counts, capacity["available_bytes"]
    )
    estimate["params"] = asdict(counts)
    return estimate


def _estimate(config: PipelineConfig, counts: ParamCounts, quantizer: Quantizer,
              device: str, dtype: torch.dtype) -> dict[str, Any]:
    act_bytes = quantizer.activation_dtype(dtype).itemsize
    trainable = counts.adapter + counts.saved
    tokens = config.train.micro_batch_size * config.data.max_length
    per_layer = tokens * (_PER_TOKEN_HIDDEN * counts.hidden_size
                          + _PER_TOKEN_INTERMEDIATE * counts.intermediate_size) * act_bytes
    logits = tokens * counts.vocab_size * 4 * _LOGIT_COPIES  # the loss is taken in fp32
    without = counts.num_layers * per_layer + logits
    # Checkpointing keeps each layer's input and recomputes one layer at a time.
    with_gc = counts.num_layers * tokens * counts.hidden_size * act_bytes + per_layer + logits
    parts = {
        # fused experts stay in the model's dtype: no quantizer here compresses 3-D stacks
        "weights_bytes": quantizer.weight_bytes(counts.quantizable, counts.other - counts.experts,
                                                dtype) + counts.experts * dtype.itemsize,
        "adapters_bytes": trainable * 4,  # peft keeps adapter weights in fp32
        "gradients_bytes": trainable * 4,
        "optimizer_bytes": trainable * _OPTIMIZER_BYTES[config.train.optimizer],
    }
    activations = with_gc if config.train.gradient_checkpointing else without
    return {
        "device": device,
        "quantizer": quantizer.name,
        "micro_batch_size": config.train.micro_batch_size,
        "max_length": config.data.max_length,
        "gradient_checkpointing": config.train.gradient_checkpointing,
        **parts,
        "activations_bytes": {"with_checkpointing": with_gc, "without_checkpointing": without},
        "total_bytes": sum(parts.values()) + activations,
    }


def _suggestions(setup: ModelSetup, counts: ParamCounts, available: int) -> list[str]:
    """Single config changes, each with what the run would then need."""
    config, quantizer, device, dtype = setup.config, setup.quantizer, setup.device, setup.dtype
    train, data = config.train, config.data
    changes: list[tuple[str, PipelineConfig, Quantizer]] = []
    if not train.gradient_checkpointing:
        changes.append(("train.gradient_checkpointing: true",
                        _with(config, train=_update(train, gradient_checkpointing=True)),
                        quantizer))
    if train.micro_batch_size > 1:
        accumulation = train.gradient_accumulation_steps * train.micro_batch_size
        changes.append((
            f"train.micro_batch_size: 1 with gradient_accumulation_steps: {accumulation} "
            "(same effective batch)",
            _with(config, train=_update(train, micro_batch_size=1,
                                              gradient_accumulation_steps=accumulation)),
            quantizer,
        ))
    if data.max_length >= 32:
        changes.append((f"data.max_length: {data.max_length // 2}",
                        _with(config, data=_update(data, max_length=data.max_length // 2)),
                        quantizer))
    if not quantizer.quantized:
        changes += [(f"model.quantizer: {other.name}", config, other)
                    for other in setup.weight_quantizers]
    if device.startswith("cuda") and train.optimizer == "adamw":
        changes.append(("train.optimizer: paged_adamw_8bit",
                        _with(config, train=_update(train, optimizer="paged_adamw_8bit")),
                        quantizer))
    lines = []
    for text, variant, variant_quantizer in changes:
        total = _estimate(variant, counts, variant_quantizer, device, dtype)["total_bytes"]
        verdict = "fits" if total <= available else "still too much"
        lines.append(f"{text}: needs {format_bytes(total)} ({verdict})")
    return lines


def _update(section: Any, **changes: Any) -> Any:
    return section.model_copy(update=changes)


def _with(config: PipelineConfig, **sections: Any) -> PipelineConfig:
    return config.model_copy(update=sections)


def print_estimate(estimate: dict[str, Any], console: Any) -> None:
    """The estimate as a few lines, and a warning with the suggestions if it won't fit."""
    act = estimate["activations_bytes"]
    cap = estimate["capacity"]
    console.print(
        f"[bold]Memory estimate[/] ({estimate['device']}, micro batch "
        f"{estimate['micro_batch_size']} × {estimate['max_length']} tokens): "
        f"weights {format_bytes(estimate['weights_bytes'])} ({estimate['quantizer']}"
        f"{_experts_note(estimate)}), "
        f"adapters {format_bytes(estimate['adapters_bytes'])}, "
        f"gradients {format_bytes(estimate['gradients_bytes'])}, "
        f"optimizer {format_bytes(estimate['optimizer_bytes'])}, activations "
        f"{format_bytes(act['with_checkpointing'])} with / "
        f"{format_bytes(act['without_checkpointing'])} without gradient checkpointing"
    )
    console.print(
        f"  total {format_bytes(estimate['total_bytes'])} of "
        f"{format_bytes(cap['available_bytes'])} available "
        f"({format_bytes(cap['total_bytes'])} total)"
    )
    if not estimate["fits"]:
        console.print("[yellow]warning:[/] this run will probably not fit in memory. Try:")
        for line in estimate["suggestions"]:
            console.print(f"  - {line}")


def _experts_note(estimate: dict[str, Any]) -> str:
    experts = estimate["params"]["experts"]
    return f"; {experts:,} fused expert weights unquantized" if experts else ""
