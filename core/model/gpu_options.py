"""The GPU-only speed and memory options: attention kernel, Liger's fused kernels and
activation offload, each checked against the device before anything is loaded.

An option that cannot work where the run is about to train is a config error naming
the field (exit 2), not a silent no-op: a user who asked for FlashAttention-2 or Liger
and got neither would read the run's speed and memory as theirs.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable
from typing import Any

import torch

from lorapipe.config import PipelineConfig
from lorapipe.errors import ConfigError

HALF = (torch.bfloat16, torch.float16)


def check_device_options(config: PipelineConfig, device: str, dtype: torch.dtype) -> None:
    """Refuse GPU-only options on a CPU, and options whose package is missing."""
    cuda = device.startswith("cuda")
    if config.model.attn_implementation == "flash_attention_2":
        _require_gpu_package("model.attn_implementation", cuda, "flash_attn", "flash-attn",
                             "flash_attention_2 runs on CUDA GPUs only; use auto (SDPA here)")
        if dtype not in HALF:
            raise ConfigError("model.attn_implementation", "flash_attention_2 computes in "
                              "bf16 or fp16; set model.dtype to bf16 (or auto)")
    if config.train.kernels == "liger":
        _require_gpu_package("train.kernels", cuda, "liger_kernel", "liger-kernel",
                             "liger's kernels are Triton GPU kernels; remove train.kernels")
    if config.train.activation_offload and not cuda:
        raise ConfigError("train.activation_offload", "moves activations from GPU to CPU "
                          "memory; a CPU run keeps them there already: remove it")


def _require_gpu_package(field: str, cuda: bool, module: str, package: str,
                         on_cpu: str) -> None:
    if not cuda:
        raise ConfigError(field, f"{on_cpu} on this machine")
    if importlib.util.find_spec(module) is None:
        raise ConfigError(field, f"needs the {package} package: pip install {package}")


def attention_kwargs(name: str, device: str, dtype: torch.dtype) -> dict[str, Any]:
    """``from_pretrained``'s ``attn_implementation``: ``auto`` is FlashAttention-2 where it
    is installed and the run computes in half precision on a GPU, else transformers' own
    default (SDPA, or eager for an architecture without SDPA support, like Gemma 2)."""
    if name == "auto":
        fast = (device.startswith("cuda") and dtype in HALF
                and importlib.util.find_spec("flash_attn") is not None)
        return {"attn_implementation": "flash_attention_2"} if fast else {}
    return {"attn_implementation": name}


def apply_liger(model: torch.nn.Module) -> list[str]:
    """Swap in Liger's kernels for the architecture's norm, rotary embedding and gated MLP
    (SwiGLU, or GeGLU for Gemma); return those patched. Liger's cross-entropy patches stay
    off: lorapipe computes the loss itself (loss.py) and uses Liger's fused linear
    cross-entropy there (``fused_cross_entropy``)."""
    import inspect

    from liger_kernel.transformers.monkey_patch import MODEL_TYPE_TO_APPLY_LIGER_FN

    model_type = model.config.model_type
    apply = MODEL_TYPE_TO_APPLY_LIGER_FN.get(model_type)
    if apply is None:
        raise ConfigError("train.kernels", f"liger has no kernels for '{model_type}' models "
                          f"(it has: {', '.join(sorted(MODEL_TYPE_TO_APPLY_LIGER_FN))}); "
                          "remove train.kernels")
    offered = inspect.signature(apply).parameters
    kernels = [name for name in ("rms_norm", "rope", "swiglu", "geglu") if name in offered]
    losses = {name: False for name in ("cross_entropy", "fused_linear_cross_entropy")
              if name in offered}
    apply(model=model, **dict.fromkeys(kernels, True), **losses)
    return kernels


def fused_cross_entropy(head: torch.nn.Module) -> Callable[..., torch.Tensor] | None:
    """Liger's fused linear cross-entropy over ``head``, or None where it would be wrong:
    a head that is not a plain linear layer (LoRA on it, ``modules_to_save``) or whose
    weight is sharded (FSDP gathers it only inside the head's own forward)."""
    from torch.distributed.tensor import DTensor

    if type(head) is not torch.nn.Linear or isinstance(head.weight, DTensor):
        return None
    from liger_kernel.transformers import LigerFusedLinearCrossEntropyLoss

    loss = LigerFusedLinearCrossEntropyLoss(reduction="sum")

    def fused(hidden: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return loss(head.weight, hidden, targets, head.bias)

    return fused
