"""Instability guards: a non-finite step changes nothing; too many in a row roll back;
a finite spike is skipped, rolled back or only reported.

One NaN batch (a corrupt sample, an fp16 overflow) should cost one skipped update, not
the run. A streak of them means the weights or optimizer state went bad, so the loop
restores the last good checkpoint and halves the learning rate. A finite loss or
gradient norm far above its recent median (a broken sample, a too-high learning rate)
does its damage through one large update, so by default that update is skipped too.
"""

from __future__ import annotations

import math
from statistics import median

import torch

from lorapipe.config import SpikeConfig
from lorapipe.train.checkpoint import TrainState


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


class SpikeGuard:
    """Compares a finite step with the median of the last normal ones (kept in the
    ``TrainState``, so a resumed run judges exactly like the uninterrupted one)."""

    def __init__(self, config: SpikeConfig) -> None:
        self.config = config

    def check(self, state: TrainState, loss: float, grad_norm: float) -> str | None:
        """What makes this step a spike, or None; a normal step joins the history."""
        cfg = self.config
        reason = None
        if len(state.recent_losses) >= cfg.window // 2:  # enough history to judge
            usual_loss, usual_norm = median(state.recent_losses), median(state.recent_grad_norms)
            if loss > cfg.loss_factor * usual_loss:
                reason = f"loss {loss:.4g} > {cfg.loss_factor:g} x recent median {usual_loss:.4g}"
            elif grad_norm > cfg.grad_norm_factor * usual_norm:
                reason = (f"grad norm {grad_norm:.4g} > {cfg.grad_norm_factor:g} x recent "
                          f"median {usual_norm:.4g}")
        if reason is None:
            state.recent_losses = [*state.recent_losses, loss][-cfg.window:]
            state.recent_grad_norms = [*state.recent_grad_norms, grad_norm][-cfg.window:]
        return reason


def assert_finite(weights: dict[str, torch.Tensor]) -> None:
    """Refuse to checkpoint non-finite trainable weights."""
    for name, param in weights.items():
        if not torch.isfinite(param).all():
            raise RuntimeError(f"refusing to checkpoint: {name} holds non-finite values")
