"""The merged model as an ONNX graph, through torch.onnx's torch.export-based exporter.

That exporter (``dynamo=True``, torch's default since 2.9) keeps batch and sequence
symbolic and fails loudly on what it cannot capture. The TorchScript tracer it replaced
runs transformers' mask code on one example and bakes its data-dependent branches into
the graph (it warns the trace "might not generalize"), which is no way to ship a model.

The graph takes what transformers' ``generate`` computes for a batch — ``input_ids``,
``attention_mask`` and ``position_ids``, so a left-padded row gets the positions it would
have alone — and returns the logits of every position. There is no KV cache: each call
runs the whole sequence.
"""

from __future__ import annotations

import contextlib
import logging
import warnings
from collections.abc import Iterator
from pathlib import Path

import torch
from transformers import PreTrainedModel

INPUTS = ("input_ids", "attention_mask", "position_ids")
OUTPUT = "logits"


class _Logits(torch.nn.Module):
    """The causal LM as a function of exactly the graph's inputs, returning logits only."""

    def __init__(self, model: PreTrainedModel) -> None:
        super().__init__()
        self.model = model

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                position_ids: torch.Tensor) -> torch.Tensor:
        return self.model(input_ids=input_ids, attention_mask=attention_mask,
                          position_ids=position_ids, use_cache=False).logits


def position_ids(attention_mask: torch.Tensor) -> torch.Tensor:
    """Positions as ``generate`` counts them: real tokens from 0, padding at 1."""
    return (attention_mask.cumsum(-1) - 1).masked_fill(attention_mask == 0, 1)


def padded_batch(vocab_size: int, length: int, padding: int,
                 seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Two random rows of ``length`` tokens, the second left-padded by ``padding``."""
    generator = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, vocab_size, (2, length), generator=generator)
    mask = torch.ones_like(ids)
    mask[1, :padding] = 0
    return ids, mask, position_ids(mask)


def write_onnx(model: PreTrainedModel, path: Path, opset: int) -> list[Path]:
    """Export ``model`` (fp32, eval mode) to ``path`` and return the files written.

    Weights past torch's threshold (1.5 GB, under protobuf's 2 GB limit) go to
    ``<path>.data`` beside it, where onnxruntime finds them.
    """
    # Batch 2 and length 8: torch.export would fix a dimension of size 1 for good. One row
    # padded, like the batches the graph will serve.
    example = padded_batch(model.config.vocab_size, length=8, padding=3, seed=0)
    batch, sequence = torch.export.Dim("batch"), torch.export.Dim("sequence")
    with _quiet():
        program = torch.onnx.export(
            _Logits(model).eval(), example, dynamo=True, opset_version=opset, verbose=False,
            input_names=list(INPUTS), output_names=[OUTPUT],
            dynamic_shapes={name: {0: batch, 1: sequence} for name in INPUTS},
        )
        program.save(path)
    return sorted(path.parent.glob(f"{path.name}*"))


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """Silence what torch.onnx says on every export that a user can do nothing about:
    torchvision's operators it skips, deprecations inside torch, and that the three inputs
    share one name per axis (they do, on purpose)."""
    registration = logging.getLogger("torch.onnx._internal.exporter._registration")
    level = registration.level
    registration.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", category=FutureWarning)
            warnings.filterwarnings("ignore", message=r"# The axis name: \w+ will not be used")
            yield
    finally:
        registration.setLevel(level)
