"""Fixtures for lorapipe's own tests (the session cache lives in the root conftest.py)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from quickstart_run import run_quickstart

from lorapipe.config import validate_config
from lorapipe.context import RunContext
from lorapipe.manifest import write_manifest
from lorapipe.model.source import resolve_model_path
from lorapipe.plan import build_plan

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def finished_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A finished shortened quickstart run; tests only read it (copy it to change it)."""
    output_dir = tmp_path_factory.mktemp("run") / "quickstart"
    result = run_quickstart(output_dir)
    assert result.returncode == 0, result.stderr[-3000:]
    return output_dir


@pytest.fixture
def repo_root() -> Path:
    return REPO


SAMPLE = REPO / "configs" / "data" / "quickstart.jsonl"
ALL_PROJECTIONS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def _make_context(output_dir: Path, **sections: Any) -> RunContext:
    data = {
        "model": {"name_or_path": "tiny-llama"},
        "data": {"loader": {"name": "jsonl", "path": str(SAMPLE)}},
        "output_dir": str(output_dir),
        **sections,
    }
    return RunContext(build_plan(validate_config(data)))


def _save_adapter(path: Path, targets: list[str] = ALL_PROJECTIONS, seed: int = 0) -> None:
    """A LoRA adapter on tiny-llama with non-zero B, so it changes the model visibly."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(
        resolve_model_path("tiny-llama"), dtype=torch.float32
    )
    model = get_peft_model(base, LoraConfig(r=4, lora_alpha=8, target_modules=targets))
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.copy_(torch.randn(param.shape, generator=generator) * 0.05)
    model.save_pretrained(path)
    write_manifest(path)  # as training publishes adapter/


@pytest.fixture
def make_context():  # noqa: ANN201
    """``make_context(output_dir, **config_sections)`` → a RunContext on tiny-llama."""
    return _make_context


@pytest.fixture
def save_adapter():  # noqa: ANN201
    """``save_adapter(path, targets=..., seed=0)`` writes a non-trivial PEFT adapter."""
    return _save_adapter
