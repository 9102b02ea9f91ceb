"""Warmup then cosine decay to min_lr_ratio, set before every optimizer step from the state."""

from __future__ import annotations

import math

import pytest
import torch
from tinyrun import config

from lorapipe.train.checkpoint import TrainState
from lorapipe.train.schedule import LearningRateSchedule, lr_factor


def _optimizer(lr: float, *group_ratios: float) -> torch.optim.Optimizer:
    """One param group per ratio, as optim.py builds LoRA+ groups: lr × ratio each."""
    groups = [{"params": [torch.nn.Parameter(torch.zeros(2))], "lr": lr * ratio}
              for ratio in group_ratios]
    return torch.optim.AdamW(groups, lr=lr)


def test_cosine_schedule_values_at_chosen_steps() -> None:
    cfg = config(learning_rate=1e-3, warmup_steps=10, lr_scheduler="cosine", min_lr_ratio=0.1)
    optimizer = _optimizer(cfg.learning_rate, 1.0)
    schedule = LearningRateSchedule(optimizer, cfg, total_steps=110)
    seen = {}
    for step in range(110):
        seen[step] = schedule.apply(optimizer, step, 1.0)  # the lr the update after `step` uses
        assert optimizer.param_groups[0]["lr"] == seen[step]
        optimizer.step()
    assert seen[0] == pytest.approx(1e-4)  # warmup: (0 + 1) / 10
    assert seen[4] == pytest.approx(5e-4)
    assert seen[9] == pytest.approx(1e-3)  # peak reached on the last warmup step
    assert seen[10] == pytest.approx(1e-3)  # cosine starts at the peak
    assert seen[60] == pytest.approx(1e-3 * (0.1 + 0.9 * 0.5))  # half way: midpoint
    assert seen[85] == pytest.approx(1e-3 * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 0.75))))
    assert seen[109] == pytest.approx(1e-3 * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 0.99))))
    assert min(seen.values()) >= 1e-4 - 1e-12  # never below min_lr_ratio × peak


@pytest.mark.parametrize("kind", ["cosine", "linear", "constant"])
def test_same_lrs_as_torch_lambda_lr_per_group_and_after_halving(kind: str) -> None:
    """Bit for bit what LambdaLR over lr_factor gives, LoRA+ groups keeping their own peak."""
    cfg = config(learning_rate=3e-4, warmup_steps=7, lr_scheduler=kind, min_lr_ratio=0.05)
    ours, theirs = (_optimizer(cfg.learning_rate, 1.0, 16.0) for _ in range(2))
    schedule = LearningRateSchedule(ours, cfg, total_steps=50)

    def factor(step: int) -> float:
        return lr_factor(step, total_steps=50, warmup=7, kind=kind, min_lr_ratio=cfg.min_lr_ratio)

    reference = torch.optim.lr_scheduler.LambdaLR(theirs, factor)
    for step in range(50):
        assert schedule.apply(ours, step, 1.0) == min(reference.get_last_lr())
        assert [g["lr"] for g in ours.param_groups] == reference.get_last_lr()
        halved = schedule.lrs(step, 0.25)  # two rollbacks: a power of two, exact
        assert halved == [base * 0.25 * factor(step) for base in reference.base_lrs]
        assert halved[1] == 16 * halved[0]
        theirs.step()
        reference.step()


def test_warmup_ratio_linear_and_constant() -> None:
    assert lr_factor(0, total_steps=100, warmup=0, kind="linear", min_lr_ratio=0) == 1.0
    assert lr_factor(50, total_steps=100, warmup=0, kind="linear", min_lr_ratio=0) == 0.5
    assert lr_factor(99, total_steps=100, warmup=5, kind="constant", min_lr_ratio=0) == 1.0
    cfg = config(warmup_steps=None, warmup_ratio=0.1)
    optimizer = _optimizer(cfg.learning_rate, 1.0)
    schedule = LearningRateSchedule(optimizer, cfg, total_steps=50)  # 5 warmup steps
    assert schedule.apply(optimizer, 0, 1.0) == pytest.approx(cfg.learning_rate / 5)
    rolled_back = TrainState(rollbacks=1)  # what a rollback does: half the lr from now on
    assert rolled_back.lr_scale == 0.5 and TrainState().lr_scale == 1.0
    assert schedule.apply(optimizer, 0, rolled_back.lr_scale) == \
        pytest.approx(cfg.learning_rate / 10)
    assert optimizer.param_groups[0]["lr"] == pytest.approx(cfg.learning_rate / 10)
