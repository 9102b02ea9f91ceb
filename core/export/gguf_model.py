"""What a GGUF file needs from a Hugging Face Llama directory: its hyper-parameters.

Only the Llama architecture is supported: its tensor layout and the Q/K permutation
below are what llama.cpp's ``llama`` architecture expects. Anything else is refused
before any tensor is read, naming what was found.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lorapipe.errors import UserError

SUPPORTED_MODEL_TYPES = ("llama",)
# RoPE variants llama.cpp's llama architecture reproduces exactly from GGUF metadata.
SUPPORTED_ROPE_TYPES = ("default", "linear", "llama3")


@dataclass(frozen=True)
class LlamaParams:
    """The hyper-parameters written as ``llama.*`` GGUF metadata."""

    n_layers: int
    n_ctx: int
    n_embd: int
    n_ff: int
    n_head: int
    n_head_kv: int
    head_dim: int
    rms_eps: float
    vocab_size: int
    rope_theta: float
    rope_type: str
    rope: dict[str, Any] = field(default_factory=dict)
    tie_word_embeddings: bool = False

    def rope_freq_factors(self) -> list[float] | None:
        """Llama 3.1's per-frequency RoPE factors (llama.cpp reads them as ``rope_freqs``).

        Mirrors transformers' ``_compute_llama3_parameters`` so llama.cpp rotates exactly
        like the model was trained; ``None`` for RoPE types that need no tensor.
        """
        if self.rope_type != "llama3":
            return None
        factor = float(self.rope.get("factor", 8.0))
        low = float(self.rope.get("low_freq_factor", 1.0))
        high = float(self.rope.get("high_freq_factor", 4.0))
        old_ctx = float(self.rope.get("original_max_position_embeddings", 8192))
        low_wavelen, high_wavelen = old_ctx / low, old_ctx / high
        factors = []
        for i in range(0, self.head_dim, 2):
            wavelen = 2 * math.pi * self.rope_theta ** (i / self.head_dim)
            if wavelen < high_wavelen:
                factors.append(1.0)
            elif wavelen > low_wavelen:
                factors.append(factor)
            else:
                smooth = (old_ctx / wavelen - low) / (high - low)
                factors.append(1.0 / ((1 - smooth) / factor + smooth))
        return factors


# What a user can run on merged/ for the architectures and tokenizers this exporter does
# not write; llama.cpp's converter ships in its source tree and in llama-cpp-python's sdist.
CONVERT = ("`python convert_hf_to_gguf.py OUTPUT_DIR/merged --outtype f16 --outfile "
           "model-f16.gguf` (from llama.cpp's source tree; `pip download --no-deps "
           "--no-binary :all: llama-cpp-python` has it under vendor/llama.cpp/)")


def read_config(model_dir: Path) -> dict[str, Any]:
    path = model_dir / "config.json"
    if not path.is_file():
        raise UserError(
            f"{path}: not found; the GGUF exporter needs a Hugging Face model directory"
        )
    return json.loads(path.read_text(encoding="utf-8"))


def llama_params(model_dir: Path) -> LlamaParams:
    """Hyper-parameters of the Llama model in ``model_dir``; refuse anything else."""
    config = read_config(model_dir)
    where = model_dir / "config.json"
    model_type = config.get("model_type")
    if model_type not in SUPPORTED_MODEL_TYPES:
        raise UserError(
            f"{where}: GGUF export supports the Llama architecture only "
            f"(model_type {', '.join(SUPPORTED_MODEL_TYPES)}), got model_type {model_type!r} "
            f"({', '.join(config.get('architectures') or ['?'])}). Remove the gguf exporter "
            f"from export.exporters and, after the run, convert with llama.cpp: {CONVERT}"
        )
    # transformers 5 writes rope_parameters; older configs rope_theta + rope_scaling.
    rope = dict(config.get("rope_parameters") or config.get("rope_scaling") or {})
    rope_type = rope.get("rope_type", rope.get("type", "default"))
    if rope_type not in SUPPORTED_ROPE_TYPES:
        raise UserError(
            f"{where}: RoPE type {rope_type!r} is not supported by the GGUF exporter "
            f"(supported: {', '.join(SUPPORTED_ROPE_TYPES)})"
        )
    n_head = int(config["num_attention_heads"])
    n_embd = int(config["hidden_size"])
    return LlamaParams(
        n_layers=int(config["num_hidden_layers"]),
        n_ctx=int(config.get("max_position_embeddings", 2048)),
        n_embd=n_embd,
        n_ff=int(config["intermediate_size"]),
        n_head=n_head,
        n_head_kv=int(config.get("num_key_value_heads") or n_head),
        head_dim=int(config.get("head_dim") or n_embd // n_head),
        rms_eps=float(config.get("rms_norm_eps", 1e-6)),
        vocab_size=int(config["vocab_size"]),
        rope_theta=float(rope.get("rope_theta", config.get("rope_theta", 10000.0))),
        rope_type=rope_type,
        rope=rope,
        tie_word_embeddings=bool(config.get("tie_word_embeddings", False)),
    )


def permute_qk(weights: Any, n_head: int) -> Any:
    """Reorder Q/K rows from Hugging Face's rotate-half RoPE layout to llama.cpp's.

    transformers rotates the two halves of each head; llama.cpp's ``llama`` architecture
    rotates interleaved pairs. Reordering the projection rows makes the two equivalent
    (the same transform as ``LlamaModel.permute`` in llama.cpp's convert_hf_to_gguf.py).
    """
    return (
        weights.reshape(n_head, 2, weights.shape[0] // n_head // 2, *weights.shape[1:])
        .swapaxes(1, 2)
        .reshape(weights.shape)
    )
