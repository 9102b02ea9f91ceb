"""Warmup then cosine decay to min_lr_ratio, stepped once per optimizer step."""

from __future__ import annotations

import math

import pytest
import torch
from tinyrun import config

from lorapipe.train.schedule import build_scheduler, lr_factor, scale_learning_rate


def test_cosine_schedule_values_at_chosen_steps() -> None:
    cfg = config(learning_rate=1e-3, warmup_steps=10, lr_scheduler="cosine", min_lr_ratio=0.1)
    param = torch.nn.Parameter(torch.zeros(2))
    optimizer = torch.optim.AdamW([param], lr=cfg.learning_rate)
    scheduler = build_scheduler(optimizer, cfg, total_steps=110)
    seen = {}
    for step in range(110):
        seen[step] = optimizer.param_groups[0]["lr"]  # the lr the update after `step` uses
        optimizer.step()
        scheduler.step()
    assert seen[0] == pytest.approx(1e-4)  # warmup: (0 + 1) / 10
    assert seen[4] == pytest.approx(5e-4)
    assert seen[9] == pytest.approx(1e-3)  # peak reached on the last warmup step
    assert seen[10] == pytest.approx(1e-3)  # cosine starts at the peak
    assert seen[60] == pytest.approx(1e-3 * (0.1 + 0.9 * 0.5))  # half way: midpoint
    assert seen[85] == pytest.approx(1e-3 * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 0.75))))
    assert seen[109] == pytest.approx(1e-3 * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 0.99))))
    assert min(seen.values()) >= 1e-4 - 1e-12  # never below min_lr_ratio × peak


def test_warmup_ratio_linear_and_constant() -> None:
    assert lr_factor(0, total_steps=100, warmup=0, kind="linear", min_lr_ratio=0) == 1.0
    assert lr_factor(50, total_steps=100, warmup=0, kind="linear", min_lr_ratio=0) == 0.5
    assert lr_factor(99, total_steps=100, warmup=5, kind="constant", min_lr_ratio=0) == 1.0
    cfg = config(warmup_steps=None, warmup_ratio=0.1)
    optimizer = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))], lr=cfg.learning_rate)
    scheduler = build_scheduler(optimizer, cfg, total_steps=50)  # 5 warmup steps
    assert optimizer.param_groups[0]["lr"] == pytest.approx(cfg.learning_rate / 5)
    scale_learning_rate(scheduler, 0.5)  # what a rollback does: effective immediately
    assert optimizer.param_groups[0]["lr"] == pytest.approx(cfg.learning_rate / 10)
