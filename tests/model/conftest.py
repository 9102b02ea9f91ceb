"""Fixtures for the model-preparation tests: a resolved config on tiny-llama."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from lorapipe.config import PipelineConfig, validate_config
from lorapipe.registry import Registry, get_registry


@pytest.fixture(scope="session")
def registry() -> Registry:
    return get_registry()


@pytest.fixture
def make_config(tmp_path: Path, registry: Registry) -> Callable[..., PipelineConfig]:
    """A resolved config for tiny-llama; keyword arguments replace whole sections."""
    data_file = tmp_path / "train.jsonl"
    data_file.write_text('{"messages": [{"role": "user", "content": "hi"}]}\n')

    def make(**sections: Any) -> PipelineConfig:
        raw: dict[str, Any] = {
            "model": {"name_or_path": "tiny-llama"},
            "data": {"loader": {"name": "jsonl", "path": str(data_file)}, "max_length": 64},
            "train": {"micro_batch_size": 2},
            "output_dir": str(tmp_path / "run"),
        }
        raw.update(sections)
        return validate_config(raw, registry)

    return make
