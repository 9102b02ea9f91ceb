"""The written graph judged by onnxruntime against transformers before anyone ships it.

The probes are batches of two at sequence lengths the export never saw, one row
left-padded, so a graph that kept an example's size, or mishandles the mask or the
positions, fails here. Logits are compared at real tokens only: at a left-padding
position the query attends to nothing, and what a runtime returns there is arbitrary.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime
import torch
from transformers import PreTrainedModel

from lorapipe_onnx.convert import INPUTS, OUTPUT, padded_batch

PROBES = ((5, 2), (13, 4))  # (length, padding of the second row)


def max_logit_diff(model: PreTrainedModel, onnx_path: Path) -> float:
    """Largest |logit difference| between onnxruntime and ``model`` over the probes."""
    session = onnxruntime.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    worst = 0.0
    for seed, (length, padding) in enumerate(PROBES, start=1):
        batch = padded_batch(model.config.vocab_size, length, padding, seed)
        with torch.no_grad():
            expected = model(**dict(zip(INPUTS, batch, strict=True)), use_cache=False).logits
        feed = {name: tensor.numpy() for name, tensor in zip(INPUTS, batch, strict=True)}
        (got,) = session.run([OUTPUT], feed)
        real = batch[1].numpy().astype(bool)
        worst = max(worst, float(np.abs(got - expected.numpy())[real].max()))
    return worst
