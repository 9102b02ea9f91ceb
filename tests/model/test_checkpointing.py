"""Gradient checkpointing changes what is stored, never the adapter gradients."""

from __future__ import annotations

import pytest
import torch
from accelerate.utils import set_seed

from lorapipe.model.adapters import build_trainable_model
from lorapipe.train.loss import loss_sum

IDS = torch.tensor([[5, 17, 300, 42, 9, 1000, 77, 3, 64, 8],
                    [11, 12, 13, 14, 15, 16, 17, 18, 19, 20]])
LABELS = IDS.masked_fill(torch.arange(10) < 4, -100)


def _adapter_grads(make_ctx, quantizer: str, checkpointing: bool) -> dict:  # noqa: ANN001
    ctx = make_ctx(adapter={"r": 4},
                         model={"name_or_path": "tiny-llama", "quantizer": quantizer})
    set_seed(0)
    model, _ = build_trainable_model(ctx.model_setup, report_path=ctx.paths.model_report,
                                     gradient_checkpointing=checkpointing)
    with torch.no_grad():  # B = 0 at init would leave every A without a gradient
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.normal_(std=0.02)
    model.train()
    loss_sum(model, {"input_ids": IDS, "labels": LABELS}).backward()
    return {name: p.grad for name, p in model.named_parameters() if p.requires_grad}


@pytest.mark.parametrize("quantizer", ["none", "nf4"])
def test_checkpointed_gradients_equal_stored_ones(make_ctx, quantizer: str) -> None:
    # The embedding output needs no gradient: non-reentrant checkpointing recomputes a
    # block for its adapters anyway, and skipping the input gradient saves backward work.
    stored = _adapter_grads(make_ctx, quantizer, checkpointing=False)
    recomputed = _adapter_grads(make_ctx, quantizer, checkpointing=True)
    assert stored.keys() == recomputed.keys() and len(stored) > 0
    for name, grad in stored.items():
        assert grad is not None and grad.abs().sum() > 0, name
        torch.testing.assert_close(recomputed[name], grad, rtol=1e-5, atol=1e-6, msg=name)
