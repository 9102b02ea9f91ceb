"""What the merge checks: the base is stored unquantized, and logits agree.

Merging into 4-bit weights (what QLoRA trained against) would re-quantize the sum and
lose most of what the adapter learned, so the merge always reads the unquantized base.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from lorapipe.errors import UserError


def refuse_quantized_checkpoint(model_dir: str) -> None:
    """A checkpoint stored quantized cannot be reloaded in full precision: say so."""
    config_path = Path(model_dir) / "config.json"
    if not config_path.is_file():
        return  # a hub id: transformers reports its own problems
    quant = json.loads(config_path.read_text(encoding="utf-8")).get("quantization_config")
    if quant:
        method = quant.get("quant_method", "unknown")
        raise UserError(
            f"model.name_or_path: {model_dir} is stored quantized ({method}); merging needs "
            "the base in full precision, and merging into quantized weights would lose the "
            "adapter's precision. Point model.name_or_path at the unquantized checkpoint, or "
            "set merge.enabled: false and ship adapter/ instead"
        )


@torch.no_grad()
def logits(model: Any, samples: list[list[int]]) -> list[torch.Tensor]:
    """fp32 logits of each sample (one at a time: no padding, so nothing to mask)."""
    device = next(model.parameters()).device
    return [
        model(input_ids=torch.tensor([ids], device=device)).logits[0].float().cpu()
        for ids in samples
    ]


def max_abs_diff(a: list[torch.Tensor], b: list[torch.Tensor]) -> float:
    return max(float((x - y).abs().max()) for x, y in zip(a, b, strict=True))
