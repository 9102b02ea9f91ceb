"""The families llama.cpp's converter writes as its ``LlamaModel`` does: Q and K rows
reordered for llama.cpp's interleaved RoPE, the vocabulary size and RoPE dimensions in the
metadata. Granite adds its four scaling multipliers; SmolLM3 its NoPE layers, which
llama.cpp places by a fixed rule rather than reading them.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import gguf
import numpy as np

from lorapipe.plugin import UserError

from .base import CONVERT, Family, llama3_rope_factors, permute_qk

if TYPE_CHECKING:
    import torch


class Llama(Family):
    model_types = ("llama", "mistral")
    arch = gguf.MODEL_ARCH.LLAMA
    rope_types = ("default", "linear", "llama3")
    reads_add_prefix_space = True

    def metadata(self, writer: gguf.GGUFWriter) -> None:
        super().metadata(writer)
        writer.add_vocab_size(self.vocab_size)
        writer.add_rope_dimension_count(self.head_dim)

    def transform(self, key: str, tensor: torch.Tensor) -> torch.Tensor:
        if key.endswith(("q_proj.weight", "q_proj.bias")):
            return permute_qk(tensor, self.n_head)
        if key.endswith(("k_proj.weight", "k_proj.bias")):
            return permute_qk(tensor, self.n_head_kv)
        return tensor

    def extra_tensors(self) -> dict[str, np.ndarray]:
        if self.rope_type != "llama3":
            return {}
        name = gguf.TENSOR_NAMES[gguf.MODEL_TENSOR.ROPE_FREQS] + ".weight"
        return {name: np.asarray(llama3_rope_factors(self.rope, self.head_dim), np.float32)}


class Granite(Llama):
    model_types = ("granite",)
    arch = gguf.MODEL_ARCH.GRANITE
    rope_types = ("default", "linear")
    reads_add_prefix_space = False

    writes_head_dim = False  # the converter drops it: llama.cpp derives it for Granite

    def metadata(self, writer: gguf.GGUFWriter) -> None:
        super().metadata(writer)
        granite_scales(writer, self.hp)


def granite_scales(writer: gguf.GGUFWriter, hp: dict[str, Any]) -> None:
    """Granite's four multipliers: transformers' *_multiplier names, llama.cpp's *_scale
    keys; 0 means "unset" to both."""
    for value, add in ((hp.get("attention_multiplier"), writer.add_attention_scale),
                       (hp.get("embedding_multiplier"), writer.add_embedding_scale),
                       (hp.get("residual_multiplier"), writer.add_residual_scale),
                       (hp.get("logits_scaling"), writer.add_logit_scale)):
        if value:
            add(float(value))


class SmolLM3(Llama):
    model_types = ("smollm3",)
    arch = gguf.MODEL_ARCH.SMOLLM3
    rope_types = ("default",)
    reads_add_prefix_space = False

    def __init__(self, hp: dict[str, Any], where: Path) -> None:
        super().__init__(hp, where)
        # llama.cpp skips RoPE on every 4th layer (n_no_rope_layer_step = 4) whatever the
        # checkpoint says, and the converter writes nothing about it: another pattern
        # would export a file that silently computes something else.
        expected = [int((i + 1) % 4 != 0) for i in range(self.n_layers)]
        got = [int(v) for v in hp.get("no_rope_layers") or expected]
        if got != expected:
            raise UserError(
                f"{where}: SmolLM3 no_rope_layers {got} differs from the NoPE layers "
                f"llama.cpp uses for this architecture (every 4th: {expected}); llama.cpp "
                f"would compute a different model. Convert with llama.cpp: {CONVERT}"
            )
