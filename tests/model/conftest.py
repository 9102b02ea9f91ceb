"""Fixtures for the model-preparation tests: a run context on tiny-llama."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from lorapipe.config import validate_config
from lorapipe.context import RunContext
from lorapipe.plan import build_plan
from lorapipe.registry import Registry, get_registry


@pytest.fixture(scope="session")
def registry() -> Registry:
    return get_registry()


@pytest.fixture
def make_ctx(tmp_path: Path, registry: Registry) -> Callable[..., RunContext]:
    """A run context on tiny-llama; keyword arguments replace whole config sections."""
    data_file = tmp_path / "train.jsonl"
    data_file.write_text('{"messages": [{"role": "user", "content": "hi"}]}\n')

    def make(**sections: Any) -> RunContext:
        raw: dict[str, Any] = {
            "model": {"name_or_path": "tiny-llama"},
            "data": {"loader": {"name": "jsonl", "path": str(data_file)}, "max_length": 64},
            "train": {"micro_batch_size": 2},
            "output_dir": str(tmp_path / "run"),
        }
        raw.update(sections)
        return RunContext(build_plan(validate_config(raw), registry))

    return make


@pytest.fixture
def load_base() -> Callable[..., Any]:
    """``load_base(ctx, device=None)``: the base model as training loads it."""
    from lorapipe.model.loading import load_base_model

    def load(ctx: RunContext, device: str | None = None) -> Any:
        return load_base_model(ctx.config.model, dtype=ctx.dtype, device=device or ctx.device,
                               quantizer=ctx.plan.quantizer)

    return load
