"""AdamW over the trainable (adapter) parameters, in decay / no-decay and LoRA+ groups.

Biases and norm weights get no weight decay (decaying them towards zero only hurts).
LoRA+ (Hayou et al., 2024) trains the B matrices with ``loraplus_lr_ratio`` × the learning
rate. The 8-bit and paged variants come from bitsandbytes and need CUDA.
"""

from __future__ import annotations

import torch

from lorapipe.config import TrainConfig
from lorapipe.errors import ConfigError

_LORA_B = ("lora_B", "lora_embedding_B")


def param_groups(model: torch.nn.Module, config: TrainConfig) -> list[dict]:
    groups: dict[tuple[bool, bool], list[torch.nn.Parameter]] = {}
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        decay = param.ndim >= 2 and "norm" not in name.lower()
        is_b = config.loraplus_lr_ratio is not None and any(key in name for key in _LORA_B)
        groups.setdefault((decay, is_b), []).append(param)
    if not groups:
        raise ValueError("the model has no trainable parameters")
    return [
        {
            "params": params,
            "weight_decay": config.weight_decay if decay else 0.0,
            "lr": config.learning_rate * (config.loraplus_lr_ratio if is_b else 1.0),
        }
        for (decay, is_b), params in sorted(groups.items())
    ]


def build_optimizer(model: torch.nn.Module, config: TrainConfig) -> torch.optim.Optimizer:
    groups = param_groups(model, config)
    if config.optimizer == "adamw":
        return torch.optim.AdamW(groups, lr=config.learning_rate)
    if not torch.cuda.is_available():
        raise ConfigError(
            "train.optimizer",
            f"'{config.optimizer}' (bitsandbytes) needs a CUDA GPU; use 'adamw' on this machine",
        )
    import bitsandbytes as bnb

    paged = config.optimizer == "paged_adamw_8bit"
    cls = bnb.optim.PagedAdamW8bit if paged else bnb.optim.AdamW8bit
    return cls(groups, lr=config.learning_rate)
