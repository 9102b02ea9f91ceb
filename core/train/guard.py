"""Instability guard: a non-finite step changes nothing; too many in a row roll back.

One NaN batch (a corrupt sample, an fp16 overflow) should cost one skipped update, not
the run. A streak of them means the weights or optimizer state went bad, so the loop
restores the last good checkpoint and halves the learning rate.
"""

from __future__ import annotations

import math

import torch


class NonFiniteGuard:
    """Counts non-finite steps in a row (the run's total lives in ``TrainState``)."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.in_a_row = 0

    def record(self, loss: float, grad_norm: float) -> bool:
        """Count this step; True if it is finite and its update may be applied."""
        finite = math.isfinite(loss) and math.isfinite(grad_norm)
        self.in_a_row = 0 if finite else self.in_a_row + 1
        return finite

    def reset(self) -> None:
        """Start a new streak: after a rollback the restored weights deserve the full limit."""
        self.in_a_row = 0

    @property
    def must_roll_back(self) -> bool:
        """The streak reached ``max_nonfinite_steps``: skipping alone no longer helps."""
        return self.in_a_row >= self.limit


def assert_finite(model: torch.nn.Module) -> None:
    """Refuse to checkpoint non-finite trainable weights."""
    for name, param in model.named_parameters():
        if param.requires_grad and not torch.isfinite(param).all():
            raise RuntimeError(f"refusing to checkpoint: {name} holds non-finite values")
