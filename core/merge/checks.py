"""What the merge checks: logits agree (the base being stored unquantized is checked
by ``lorapipe.model.source.refuse_stored_quantized``).

Merging into 4-bit weights (what QLoRA trained against) would re-quantize the sum and
lose most of what the adapter learned, so the merge always reads the unquantized base.
"""

from __future__ import annotations

from typing import Any

import torch


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
