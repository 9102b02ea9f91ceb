"""Quantizers on tiny-llama with real bitsandbytes on the CPU: 4-bit layers, their size,
QLoRA learning, and refusing an impossible setup before any weight is read."""

from __future__ import annotations

import json
from pathlib import Path

import bitsandbytes as bnb
import pytest
import torch

from lorapipe.artifacts import RunPaths
from lorapipe.errors import ConfigError
from lorapipe.model.adapters import build_trainable_model
from lorapipe.model.targets import adaptable_modules


def _nf4_bytes(layers: list[bnb.nn.Linear4bit]) -> int:
    """Packed weights plus every quantization statistic, shared tensors counted once."""
    seen: dict[int, int] = {}
    for layer in layers:
        state = layer.weight.quant_state
        tensors = [layer.weight, state.absmax, state.code]
        if state.nested:
            tensors += [state.state2.absmax, state.state2.code]
        for t in tensors:
            seen[t.data_ptr()] = t.numel() * t.element_size()
    return sum(seen.values())


def test_nf4_layers_are_4bit_small_and_run(load_base, make_ctx) -> None:
    model = load_base(make_ctx())
    layers = list(adaptable_modules(model).values())
    assert len(layers) == 4 * 7
    assert all(isinstance(layer, bnb.nn.Linear4bit) for layer in layers)
    assert all(layer.weight.quant_state.quant_type == "nf4" for layer in layers)
    assert not isinstance(model.lm_head, bnb.nn.Linear4bit)  # the head stays full precision
    bf16_bytes = sum(torch.Size(layer.weight.quant_state.shape).numel() * 2 for layer in layers)
    assert _nf4_bytes(layers) <= 0.30 * bf16_bytes
    logits = model(input_ids=torch.tensor([[1, 2, 3, 4]])).logits
    assert logits.shape == (1, 4, model.config.vocab_size) and torch.isfinite(logits).all()


def test_none_loads_in_model_dtype(load_base, make_ctx) -> None:
    ctx = make_ctx(model={"name_or_path": "tiny-llama", "quantizer": "none",
                                "dtype": "bf16"})
    model = load_base(ctx)
    assert all(type(m) is torch.nn.Linear for m in adaptable_modules(model).values())
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16}


def test_unrunnable_quantizer_is_refused_before_loading(load_base, make_ctx) -> None:
    # The path does not exist: reaching it would raise a model.name_or_path error instead.
    ctx = make_ctx(model={"name_or_path": "/nonexistent/model", "quantizer": "nf4"})
    with pytest.raises(ConfigError) as err:
        load_base(ctx, device="meta")
    assert err.value.field == "model.quantizer" and "cannot run on meta" in str(err.value)


def test_missing_model_names_the_field(load_base, make_ctx) -> None:
    ctx = make_ctx(model={"name_or_path": "/nonexistent/model", "quantizer": "none"})
    with pytest.raises(ConfigError, match="model.name_or_path"):
        load_base(ctx)


@pytest.mark.parametrize("checkpointing", [False, True])
def test_qlora_steps_reduce_loss(make_ctx, checkpointing: bool) -> None:
    ctx = make_ctx(adapter={"r": 8, "alpha": 16, "dropout": 0.0})
    model, report = build_trainable_model(ctx.model_setup, report_path=ctx.paths.model_report,
                                          gradient_checkpointing=checkpointing)
    uses_checkpointing = any(getattr(m, "gradient_checkpointing", False) for m in model.modules())
    assert uses_checkpointing is checkpointing
    torch.manual_seed(0)
    batch = torch.randint(0, 2000, (2, 32))
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=3e-3)
    model.train()
    losses = []
    for _ in range(8):
        loss = model(input_ids=batch, labels=batch).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        losses.append(loss.item())
    assert losses[-1] < losses[0] - 0.1, losses
    written = json.loads(RunPaths(Path(ctx.config.output_dir)).model_report.read_text())
    assert written["parameters"] == report["parameters"]
    assert written["targets"]["detector"] == "llama"
    assert set(written["memory"]["measured"]) == {"baseline", "model_loaded", "adapters_injected"}
