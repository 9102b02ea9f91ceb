"""Learning-rate schedule: linear warmup, then cosine / linear / constant down to min_lr_ratio.

Stepped once per optimizer step; ``step`` below counts optimizer steps already taken, so
the first update uses ``lr_factor(0)``, which is already non-zero during warmup.
"""

from __future__ import annotations

import math

from torch.optim import Optimizer
from torch.optim.lr_scheduler import LambdaLR

from lorapipe.config import TrainConfig


def warmup_steps(config: TrainConfig, total_steps: int) -> int:
    """``warmup_steps`` if given, else ``warmup_ratio`` of the run, rounded up."""
    if config.warmup_steps is not None:
        return min(config.warmup_steps, total_steps)
    return math.ceil(config.warmup_ratio * total_steps)


def lr_factor(step: int, *, total_steps: int, warmup: int, kind: str,
              min_lr_ratio: float) -> float:
    """Multiplier of the peak learning rate for the update after ``step`` updates."""
    if step < warmup:
        return (step + 1) / warmup
    if kind == "constant":
        return 1.0
    progress = min(1.0, (step - warmup) / max(1, total_steps - warmup))
    decay = 0.5 * (1.0 + math.cos(math.pi * progress)) if kind == "cosine" else 1.0 - progress
    return min_lr_ratio + (1.0 - min_lr_ratio) * decay


def build_scheduler(optimizer: Optimizer, config: TrainConfig, total_steps: int) -> LambdaLR:
    warmup = warmup_steps(config, total_steps)

    def factor(step: int) -> float:
        return lr_factor(step, total_steps=total_steps, warmup=warmup,
                         kind=config.lr_scheduler, min_lr_ratio=config.min_lr_ratio)

    return LambdaLR(optimizer, factor)


def scale_learning_rate(scheduler: LambdaLR, scale: float) -> None:
    """Multiply the peak learning rate (e.g. halve it after a rollback), effective now.

    ``base_lrs`` is part of the scheduler's state_dict, so the change survives a resume.
    """
    scheduler.base_lrs = [lr * scale for lr in scheduler.base_lrs]
    sync_learning_rate(scheduler)


def sync_learning_rate(scheduler: LambdaLR) -> None:
    """Set each param group's lr from the scheduler's state (after loading or rescaling it)."""
    groups = scheduler.optimizer.param_groups
    for group, base, fn in zip(groups, scheduler.base_lrs, scheduler.lr_lambdas, strict=True):
        group["lr"] = base * fn(scheduler.last_epoch)
    scheduler._last_lr = [group["lr"] for group in groups]
