"""``dtype: auto`` on the CPU: bf16 only with AMX tiles (AVX512-BF16 alone trained slower
than fp32), and model_report.json says which and why."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from lorapipe.model import dtypes


@pytest.mark.parametrize(("flags", "expected", "why"), [
    ("fpu avx2 fma", torch.float32, "no bf16 units"),
    ("avx2 avx512f avx512_bf16", torch.float32, "AVX512-BF16 but no AMX"),
    ("avx512_bf16 amx_tile amx_bf16", torch.bfloat16, "AMX"),
])
def test_auto_picks_bf16_on_the_cpu_only_with_amx(flags: str, expected: torch.dtype, why: str,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(dtypes, "_cpu_flags", lambda: frozenset(flags.split()))
    assert dtypes.resolve_dtype("auto", device="cpu") == expected
    assert why in dtypes.auto_dtype_reason("cpu")
    assert dtypes.resolve_dtype("bf16", device="cpu") == torch.bfloat16  # asked: honoured


def test_the_model_report_records_the_choice(make_ctx, tmp_path: Path) -> None:
    from lorapipe.model.adapters import build_trainable_model

    ctx = make_ctx(model={"name_or_path": "tiny-llama", "quantizer": "none"})
    build_trainable_model(ctx.model_setup, report_path=ctx.paths.model_report,
                          gradient_checkpointing=False)
    model = json.loads(ctx.paths.model_report.read_text())["model"]
    assert model["dtype_reason"] == dtypes.auto_dtype_reason("cpu")
    assert model["dtype_reason"].startswith(model["dtype"])
