"""Learning-rate schedule: linear warmup, then cosine / linear / constant down to min_lr_ratio.

``step`` below counts optimizer steps already taken, so the first update uses
``lr_factor(0)``, which is already non-zero during warmup.
"""

from __future__ import annotations

import math

from torch.optim import Optimizer

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


class LearningRateSchedule:
    """Each param group's lr as a pure function: ``peak × scale × lr_factor(step)``.

    The loop passes ``TrainState.step`` and ``TrainState.lr_scale`` (halved by each
    rollback) and calls :meth:`apply` right before every optimizer step. Why not torch's
    ``LambdaLR``: it keeps the schedule's position and peaks as state of its own
    (``last_epoch``, ``base_lrs``) that would have to be checkpointed beside TrainState,
    kept in step with it across rollbacks, and rescaled through its private attributes.
    Computed from the state, the lr needs nothing saved but ``state.json``, a rollback
    changes only the scale, and a resumed or rolled-back run cannot disagree with it.
    """

    def __init__(self, optimizer: Optimizer, config: TrainConfig, total_steps: int) -> None:
        # Each group's lr at construction is its peak: LoRA+ B groups keep their higher one.
        self.peaks = [group["lr"] for group in optimizer.param_groups]
        self.total_steps = total_steps
        self.warmup = warmup_steps(config, total_steps)
        self.kind = config.lr_scheduler
        self.min_lr_ratio = config.min_lr_ratio

    def lrs(self, step: int, scale: float) -> list[float]:
        """Every group's lr for the update after ``step`` updates."""
        factor = lr_factor(step, total_steps=self.total_steps, warmup=self.warmup,
                           kind=self.kind, min_lr_ratio=self.min_lr_ratio)
        return [peak * scale * factor for peak in self.peaks]

    def apply(self, optimizer: Optimizer, step: int, scale: float) -> float:
        """Set each group's lr for the next update; return the lowest (the base groups')."""
        lrs = self.lrs(step, scale)
        for group, lr in zip(optimizer.param_groups, lrs, strict=True):
            group["lr"] = lr
        return min(lrs)
