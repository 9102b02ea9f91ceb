"""A run directory holding a real, non-trivial PEFT adapter on tiny-llama."""

from __future__ import annotations

from pathlib import Path

import pytest

from lorapipe.context import RunContext


@pytest.fixture
def adapter_run(tmp_path: Path, make_context, save_adapter) -> RunContext:  # noqa: ANN001
    ctx = make_context(tmp_path / "run")
    save_adapter(ctx.paths.adapter)
    return ctx
