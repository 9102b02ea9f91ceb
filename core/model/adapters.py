"""LoRA injection with peft, the check that only adapters train, and the parameter report."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import torch
from peft import LoraConfig, PeftModel, get_peft_model
from peft.tuners.lora import LoraLayer, ParamWrapper
from rich.console import Console

from lorapipe.atomic import atomic_write_json
from lorapipe.config import AdapterConfig
from lorapipe.model.dtypes import auto_dtype_reason, dtype_name
from lorapipe.model.estimate import count_parameters, estimate_memory, print_estimate
from lorapipe.model.gpu_options import apply_liger
from lorapipe.model.loading import load_base_model, weightless_model
from lorapipe.model.memory import memory_snapshot
from lorapipe.model.setup import ModelSetup
from lorapipe.model.targets import (
    ChosenTargets,
    not_adapted,
    select_targets,
    targets_are_transposed,
)
from lorapipe.units import format_bytes

console = Console(highlight=False)

_INIT: dict[str, bool | str] = {"default": True, "gaussian": "gaussian", "pissa": "pissa",
                                "olora": "olora"}


def lora_config(
    adapter: AdapterConfig, target_modules: list[str], *, fan_in_fan_out: bool = False,
    target_parameters: list[str] = (),
) -> LoraConfig:
    """The peft ``LoraConfig`` for ``adapter.*`` and the chosen targets.

    ``fan_in_fan_out`` when the targets store weights as (in, out) (GPT-2's ``Conv1D``),
    so peft applies and merges the update transposed. Fused expert weights
    (``target_parameters``) are adapted by peft's ``ParamWrapper``: one low-rank update
    per expert, applied to the parameter itself, which is what a 3-D expert stack needs and
    what peft's merge and loading understand, so no update of our own is needed. It cannot
    apply dropout (its input is a weight, not activations): the config then says 0 and
    ``add_linear_dropout`` puts ``adapter.dropout`` back on the linear layers.
    """
    return LoraConfig(
        fan_in_fan_out=fan_in_fan_out,
        r=adapter.r,
        lora_alpha=adapter.alpha,
        lora_dropout=0.0 if target_parameters else adapter.dropout,
        bias=adapter.bias,
        use_rslora=adapter.use_rslora,
        use_dora=adapter.use_dora,
        init_lora_weights=_INIT[adapter.init],
        target_modules=list(target_modules) or None,
        target_parameters=list(target_parameters) or None,
        modules_to_save=list(adapter.modules_to_save) or None,
        task_type="CAUSAL_LM",
    )


def build_trainable_model(
    setup: ModelSetup, *, gradient_checkpointing: bool, report_path: Path
) -> tuple[PeftModel, dict[str, Any]]:
    """Choose targets and estimate memory before loading anything, then load the
    (quantized) base, prepare it, inject LoRA and report.

    Writes the report to ``report_path`` (the run's ``model_report.json``) and prints its
    summary; returns the model and the report.
    """
    config, quantizer, device, dtype = setup.config, setup.quantizer, setup.device, setup.dtype
    measured = {"baseline": memory_snapshot()}
    targets, estimate = _targets_and_estimate(setup)
    if "total_bytes" in estimate:
        print_estimate(estimate, console)

    model = load_base_model(config.model, dtype=dtype, device=device, quantizer=quantizer)
    measured["model_loaded"] = memory_snapshot()
    kernels = apply_liger(model) if config.train.kernels == "liger" else []
    model = quantizer.prepare_for_training(model, gradient_checkpointing=gradient_checkpointing)

    if targets is None:  # the architecture could not be built without weights
        targets = select_targets(model, setup)
    transposed = targets_are_transposed(model, targets.modules)
    skipped = not_adapted(model, targets)  # before peft wraps the layers
    peft_model = get_peft_model(
        model, lora_config(config.adapter, targets.modules, fan_in_fan_out=transposed,
                           target_parameters=targets.parameters)
    )
    if targets.parameters:
        add_linear_dropout(peft_model, config.adapter.dropout)
    check_only_adapters_train(peft_model, config.adapter)
    measured["adapters_injected"] = memory_snapshot()

    report = {
        "model": {
            "name_or_path": config.model.name_or_path,
            "model_type": getattr(model.config, "model_type", None),
            "architecture": type(model).__name__,
            "dtype": dtype_name(dtype),
            "dtype_reason": (auto_dtype_reason(device) if config.model.dtype == "auto"
                             else "model.dtype"),
            "device": device,
            "attn_implementation": model.config._attn_implementation,
            "kernels": kernels,
        },
        "quantizer": {"name": quantizer.name, **quantizer.options.model_dump(mode="json"),
                      "quantized": quantizer.quantized,
                      "storage_dtype": dtype_name(quantizer.storage_dtype(dtype, device))},
        "adapter": {**config.adapter.model_dump(mode="json", exclude={"target_detector"}),
                    "scaling": _scaling(config.adapter)},
        "targets": {**targets.as_dict(), "not_adapted": skipped},
        "gradient_checkpointing": gradient_checkpointing,
        "parameters": parameter_counts(peft_model, targets),
        "memory": {"estimate": estimate, "measured": measured},
    }
    atomic_write_json(report_path, report)
    print_report(report)
    return peft_model, report


def add_linear_dropout(model: PeftModel, p: float) -> None:
    """``adapter.dropout`` on the LoRA of every linear layer, where the config had to say 0
    because it also targets parameters (see ``lora_config``)."""
    if not p:
        return
    for module in model.modules():
        if isinstance(module, LoraLayer) and not isinstance(module, ParamWrapper):
            for name in list(module.lora_dropout):
                module.lora_dropout[name] = torch.nn.Dropout(p)


def _targets_and_estimate(setup: ModelSetup) -> tuple[ChosenTargets | None, dict[str, Any]]:
    """The adapter targets and the memory estimate, from the weightless model.

    An architecture that cannot be built weightless is reported, not fatal, because the
    estimate only advises; the targets are then chosen on the loaded model (``None``).
    """
    try:
        meta = weightless_model(setup.config.model)
    except (ValueError, TypeError, RuntimeError, NotImplementedError) as err:
        console.print(f"[yellow]warning:[/] no memory estimate for this model: {err}")
        return None, {"unavailable": str(err)}
    targets = select_targets(meta, setup)
    counts = count_parameters(meta, setup.config.adapter, targets)
    return targets, estimate_memory(setup, counts)


def _scaling(adapter: AdapterConfig) -> float:
    return adapter.alpha / (math.sqrt(adapter.r) if adapter.use_rslora else adapter.r)


def _is_adapter_param(name: str, adapter: AdapterConfig) -> bool:
    if "lora_" in name or "modules_to_save." in name:
        return True
    # peft trains biases too when asked: all of them, or those of adapted layers.
    return adapter.bias != "none" and name.endswith(".bias")


def check_only_adapters_train(model: PeftModel, adapter: AdapterConfig) -> None:
    """Verify, rather than assume, that exactly the adapter weights (and
    ``modules_to_save``) require grad: a frozen adapter trains nothing and a trainable
    base weight silently turns LoRA into full fine-tuning."""
    wrong = [n for n, p in model.named_parameters() if p.requires_grad
             and not _is_adapter_param(n, adapter)]
    frozen = [n for n, p in model.named_parameters() if not p.requires_grad
              and ("lora_A" in n or "lora_B" in n)]
    if wrong or frozen or not any(p.requires_grad for p in model.parameters()):
        raise RuntimeError(
            "after LoRA injection the trainable parameters are wrong: "
            f"base weights requiring grad {wrong[:5]}, frozen adapter weights {frozen[:5]}"
        )


def parameter_counts(model: PeftModel, targets: ChosenTargets) -> dict[str, Any]:
    """Total and trainable parameters (4-bit weights counted unpacked, as peft does) and,
    per targeted module name, how many layers got an adapter and its parameters."""
    trainable, total = model.get_nb_trainable_parameters()
    per_target: dict[str, dict[str, Any]] = {}
    for name, module in model.named_modules():
        if not isinstance(module, LoraLayer):
            continue
        base = type(module.get_base_layer()).__name__
        if isinstance(module, ParamWrapper):
            name = f"{name.replace('.base_layer', '')}.{module.parameter_name}"
            base = f"{base} ({module.num_experts} experts)"
        names = targets.parameters if isinstance(module, ParamWrapper) else targets.modules
        key = next((t for t in names if name == t or name.endswith("." + t)),
                   name.rsplit(".", 1)[-1])
        entry = per_target.setdefault(key, {"layers": 0, "adapter_params": 0,
                                            "base_layer": base})
        entry["layers"] += 1
        # a nested ParamWrapper holds the next one: its own adapter weights only
        entry["adapter_params"] += sum(p.numel() for n, p in module.named_parameters()
                                       if "lora_" in n and "base_layer." not in n
                                       and p.requires_grad)
    return {
        "total": total,
        "trainable": trainable,
        "trainable_ratio": trainable / total if total else 0.0,
        "per_target": per_target,
    }


def print_report(report: dict[str, Any]) -> None:
    params, targets = report["parameters"], report["targets"]
    how = f"detector '{targets['detector']}'" if targets["detector"] else "adapter.target_modules"
    console.print(
        f"[bold]Model[/] {report['model']['name_or_path']} ({report['model']['model_type']}), "
        f"quantizer {report['quantizer']['name']}, LoRA r={report['adapter']['r']} "
        f"alpha={report['adapter']['alpha']}"
    )
    names = ", ".join([*targets["modules"], *targets["parameters"]])
    console.print(f"  targets {names} — {how}: {targets['reason']}")
    console.print(
        f"  trainable {params['trainable']:,} of {params['total']:,} parameters "
        f"({100 * params['trainable_ratio']:.3f}%)"
    )
    for name, entry in params["per_target"].items():
        console.print(f"    {name:<12} {entry['layers']:>3} × {entry['base_layer']:<12} "
                      f"{entry['adapter_params']:,} adapter parameters")
    for entry in targets["not_adapted"]:
        console.print(f"  not adapted: {entry['name']} ({entry['layers']} × "
                      f"{entry['parameters'] // entry['layers']:,} parameters): "
                      f"{entry['reason']}")
    measured = report["memory"]["measured"]
    console.print(
        f"  process memory: {format_bytes(measured['baseline']['rss_bytes'])} at start, "
        f"{format_bytes(measured['adapters_injected']['rss_bytes'])} with adapters"
    )
