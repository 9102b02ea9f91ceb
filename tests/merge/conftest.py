"""A run directory holding a real, non-trivial PEFT adapter on tiny-llama."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from lorapipe.config import validate_config
from lorapipe.context import RunContext
from lorapipe.models import resolve_model_path
from lorapipe.registry import get_registry

SAMPLE = Path(__file__).resolve().parents[2] / "configs" / "data" / "quickstart.jsonl"
TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def _make_context(output_dir: Path, **sections) -> RunContext:
    data = {
        "model": {"name_or_path": "tiny-llama"},
        "data": {"loader": {"name": "jsonl", "path": str(SAMPLE)}},
        "output_dir": str(output_dir),
        **sections,
    }
    registry = get_registry()
    return RunContext(validate_config(data, registry), registry)


def save_adapter(path: Path, seed: int = 0) -> None:
    """A LoRA adapter with non-zero B, so merging changes the model visibly."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(resolve_model_path("tiny-llama"),
                                                dtype=torch.float32)
    model = get_peft_model(base, LoraConfig(r=4, lora_alpha=8, target_modules=TARGETS))
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.copy_(torch.randn(param.shape, generator=generator) * 0.05)
    model.save_pretrained(path)


@pytest.fixture
def make_context():
    """``make_context(output_dir, **config_sections)`` → a RunContext on tiny-llama."""
    return _make_context


@pytest.fixture
def adapter_run(tmp_path: Path) -> RunContext:
    ctx = _make_context(tmp_path / "run")
    save_adapter(ctx.paths.adapter)
    return ctx
