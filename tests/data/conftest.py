"""Fixtures for the prepare-stage tests: the tiny-llama tokenizer and a config builder."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml
from transformers import AutoTokenizer

from lorapipe.context import RunContext
from lorapipe.model.source import resolve_model_path
from lorapipe.pipeline import run_one_stage
from lorapipe.plan import load_plan
from lorapipe.registry import get_registry


@pytest.fixture(scope="session")
def tokenizer(lorapipe_cache: Path) -> Any:
    return AutoTokenizer.from_pretrained(resolve_model_path("tiny-llama"))


@pytest.fixture
def prepare(tmp_path: Path) -> Callable[..., tuple[dict[str, Any], Path]]:
    """Run the prepare stage on ``data_path`` with ``data`` overrides; returns
    (stage summary, output_dir)."""

    def run(data_path: Path | str, output: str = "run", seed: int = 42,
            **data: Any) -> tuple[dict[str, Any], Path]:
        out = tmp_path / output
        config = {
            "model": {"name_or_path": "tiny-llama"},
            "data": {"loader": {"name": "jsonl", "path": str(data_path)}, **data},
            "train": {"seed": seed},
            "output_dir": str(out),
        }
        path = tmp_path / f"{output}.yaml"
        path.write_text(yaml.safe_dump(config))
        registry = get_registry()
        ctx = RunContext(load_plan(path, registry=registry))
        return run_one_stage(ctx, "prepare"), out

    return run
