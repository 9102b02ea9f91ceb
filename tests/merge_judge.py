"""transformers and peft as the judges of a merge: what ``merged/`` computes against what
the base computes with the adapter loaded by peft, unmerged, as a user would load it."""

from __future__ import annotations

from pathlib import Path

import torch
from peft import PeftModel
from transformers import AutoModelForCausalLM


def _logits(model: torch.nn.Module, ids: list[int]) -> torch.Tensor:
    with torch.no_grad():
        return model.eval()(torch.tensor([ids])).logits[0]


def merge_errors(base_dir: Path, adapter: Path, merged: Path,
                 ids: list[int]) -> tuple[float, float]:
    """The largest |logit| difference on ``ids`` between merged/ and base + adapter (fp32),
    and between merged/ and the base alone (how much the adapter changed)."""
    base = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32)
    plain = _logits(base, ids)
    expected = _logits(PeftModel.from_pretrained(base, adapter), ids)
    got = _logits(AutoModelForCausalLM.from_pretrained(merged, dtype=torch.float32), ids)
    return float((got - expected).abs().max()), float((got - plain).abs().max())


def visible_lora(model: torch.nn.Module, scale: float = 0.05, seed: int = 0) -> None:
    """Seeded random ``lora_B`` weights (peft starts them at zero), so an adapter changes
    what the model computes and a judge can tell a lost update."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.copy_(torch.randn(param.shape, generator=generator) * scale)
