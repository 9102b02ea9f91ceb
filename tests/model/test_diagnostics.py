"""LoRA diagnostics on adapters whose updates are known: norms and directions used are
checked against the full ``scale · B A`` matrix's own singular values."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from lorapipe.model.diagnostics import adapter_diagnostics, update_singular_values

PREFIX = "base_model.model.model.layers.{layer}.self_attn.{module}"


def _adapter(out: Path, r: int, true_rank: int, rslora: bool = False) -> Path:
    """Two layers of q_proj and v_proj whose updates have rank ``true_rank`` (≤ r)."""
    generator = torch.Generator().manual_seed(0)
    tensors = {}
    for layer in range(2):
        for module in ("q_proj", "v_proj"):
            a = torch.randn(r, 48, generator=generator)
            b = torch.randn(32, r, generator=generator)
            b[:, true_rank:] = 0  # only the first true_rank directions carry anything
            name = PREFIX.format(layer=layer, module=module)
            tensors[f"{name}.lora_A.weight"] = a
            tensors[f"{name}.lora_B.weight"] = b
    out.mkdir()
    save_file(tensors, out / "adapter_model.safetensors")
    (out / "adapter_config.json").write_text(json.dumps(
        {"r": r, "lora_alpha": 2 * r, "use_rslora": rslora}))
    return out


def test_singular_values_are_those_of_the_full_update() -> None:
    generator = torch.Generator().manual_seed(1)
    a, b = torch.randn(8, 40, generator=generator), torch.randn(24, 8, generator=generator)
    expected = torch.linalg.svdvals(2.0 * b.double() @ a.double())[:8]
    assert torch.allclose(update_singular_values(a, b, 2.0), expected, rtol=1e-10)


def test_a_low_rank_update_in_a_large_rank_is_called_oversized(tmp_path: Path) -> None:
    report = adapter_diagnostics(_adapter(tmp_path / "a", r=16, true_rank=2))
    assert set(report["modules"]) == {"q_proj", "v_proj"}
    q = report["modules"]["q_proj"]
    assert q["layers"] == 2 and q["directions_used_max"] <= 2
    weights = load_file(tmp_path / "a" / "adapter_model.safetensors")
    norms = [float((2.0 * weights[f"{PREFIX.format(layer=i, module='q_proj')}.lora_B.weight"]
                    @ weights[f"{PREFIX.format(layer=i, module='q_proj')}.lora_A.weight"]).norm())
             for i in range(2)]
    assert q["update_norm_mean"] == pytest.approx(sum(norms) / 2, rel=1e-5)
    assert len(report["notes"]) == 1 and "oversized" in report["notes"][0]
    assert "r=4" in report["notes"][0]


def test_a_full_rank_update_is_called_saturated(tmp_path: Path) -> None:
    report = adapter_diagnostics(_adapter(tmp_path / "a", r=4, true_rank=4, rslora=True))
    assert all(m["directions_used_median"] >= 3 for m in report["modules"].values())
    assert len(report["notes"]) == 1 and "saturated" in report["notes"][0]


def test_an_untrained_adapter_says_so(tmp_path: Path) -> None:
    report = adapter_diagnostics(_adapter(tmp_path / "a", r=8, true_rank=0))
    assert report["notes"] == ["the adapter is still zero: training did not change the model"]
