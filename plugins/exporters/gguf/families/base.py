"""What every family shares: :class:`Family`, the description of one architecture as
llama.cpp names, parameterises and lays out its tensors, and the weight transforms
several families use.

llama.cpp has one compute graph per architecture and reads its hyper-parameters from
GGUF metadata under fixed keys; a few families also store weights differently from
transformers (Llama's Q/K row order, Gemma's norm offset, fused expert tensors). Each
family mirrors what llama.cpp's own converter (``convert_hf_to_gguf.py``, ``conversion/``)
writes for it, so llama.cpp computes what transformers computes; tests check both the
logits and parity with the converter.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import gguf
import numpy as np

if TYPE_CHECKING:
    import torch

from lorapipe.plugin import UserError

# What a user can run on merged/ for the architectures this exporter does not write;
# llama.cpp's converter ships in its source tree and in llama-cpp-python's sdist.
CONVERT = ("`python convert_hf_to_gguf.py OUTPUT_DIR/merged --outtype f16 --outfile "
           "model-f16.gguf` (from llama.cpp's source tree; `pip download --no-deps "
           "--no-binary :all: llama-cpp-python` has it under vendor/llama.cpp/)")


@dataclass(frozen=True)
class Source:
    """Where one tensor of the file comes from in the checkpoint."""

    name: str  # as gguf-py's tensor map knows it (and Family.transform receives it)
    keys: tuple[str, ...]  # read and, when several (one per expert), stacked on a new axis
    shape: tuple[int, ...]
    rows: slice | None = None  # the rows (second-last axis) it takes of a fused tensor


class Family:
    """One architecture as llama.cpp names, parameterises and lays out its tensors."""

    model_types: ClassVar[tuple[str, ...]]
    arch: ClassVar[gguf.MODEL_ARCH]
    # RoPE variants llama.cpp reproduces for this family from GGUF metadata alone.
    rope_types: ClassVar[tuple[str, ...]] = ("default", "linear")
    # llama.cpp's SentencePiece tokenizer adds a leading space unless told otherwise.
    add_space_prefix: ClassVar[bool | None] = None
    # ...or as tokenizer_config.json's add_prefix_space says (Llama's converter reads it).
    reads_add_prefix_space: ClassVar[bool] = False
    # Phi-3's converter types the added tokens of tokenizer.json by their special flag.
    spm_added_from_tokenizer_json: ClassVar[bool] = False
    # a tokenizer kind of llama.cpp's that a family has to itself ("gemma4"), and the
    # tokens it renders as text
    tokenizer_model: ClassVar[str | None] = None
    visible_tokens: ClassVar[frozenset[str]] = frozenset()
    # whether config.json's head_dim goes into the key/value length keys
    writes_head_dim: ClassVar[bool] = True
    # checkpoint tensors llama.cpp never reads for this family
    skipped: ClassVar[tuple[str, ...]] = ()
    # the config key of how many experts each token is routed to
    experts_used_key: ClassVar[str] = "num_experts_per_tok"
    # linear layers a --lora adapter GGUF cannot update in llama.cpp, and why
    lora_refused: ClassVar[dict[str, str]] = {}
    # for a text model packaged in a multimodal checkpoint (set by model_family): each
    # checkpoint key as the text model names it, None for one outside it (families.packaged)
    packaged: Callable[[str], str | None] | None = None

    def __init__(self, hp: dict[str, Any], where: Path) -> None:
        self.hp = hp
        self.where = where
        rope = hp.get("rope_parameters") or hp.get("rope_scaling") or {}
        self.rope: dict[str, Any] = dict(rope.get("full_attention", rope))
        self.rope_swa: dict[str, Any] = dict(rope.get("sliding_attention") or {})
        rope_type = self.rope.get("rope_type", self.rope.get("type", "default"))
        if rope_type not in self.rope_types:
            raise UserError(
                f"{where}: RoPE type {rope_type!r} of {hp.get('model_type')} is not supported "
                f"by the GGUF exporter (supported: {', '.join(self.rope_types)}); convert "
                f"with llama.cpp after the run: {CONVERT}"
            )
        self.rope_type = rope_type

    @property
    def n_layers(self) -> int:
        return int(self.hp["num_hidden_layers"])

    @property
    def vocab_size(self) -> int:
        return int(self.hp["vocab_size"])

    @property
    def n_head(self) -> int:
        return int(self.hp["num_attention_heads"])

    @property
    def n_head_kv(self) -> int:
        return int(self.hp.get("num_key_value_heads") or self.n_head)

    @property
    def n_experts(self) -> int:
        """Routed experts per layer (0 for a dense model); llama-quantize's mixes differ."""
        return 0

    def expert_counts(self, writer: gguf.GGUFWriter) -> None:
        """How many experts a layer holds and routes each token to (0 without experts:
        llama.cpp asserts on a count of chosen experts beyond the experts)."""
        writer.add_expert_count(self.n_experts)
        writer.add_expert_used_count(int(self.hp[self.experts_used_key]) if self.n_experts
                                     else 0)

    @property
    def head_dim(self) -> int:
        return int(self.hp.get("head_dim") or self.hp["hidden_size"] // self.n_head)

    def metadata(self, writer: gguf.GGUFWriter) -> None:
        """The hyper-parameters, as llama.cpp's converter writes them for most families."""
        hp = self.hp
        writer.add_block_count(self.n_layers)
        writer.add_context_length(int(hp["max_position_embeddings"]))
        writer.add_embedding_length(int(hp["hidden_size"]))
        if hp.get("intermediate_size") is not None:  # MoE configs may have none
            writer.add_feed_forward_length(int(hp["intermediate_size"]))
        writer.add_head_count(self.n_head)
        if hp.get("num_key_value_heads") is not None:
            writer.add_head_count_kv(self.n_head_kv)
        if self.rope_type == "linear":
            writer.add_rope_scaling_type(gguf.RopeScalingType.LINEAR)
            writer.add_rope_scaling_factor(float(self.rope["factor"]))
        if self.rope_type == "yarn":
            self.yarn_metadata(writer)
        if self.rope.get("rope_theta") is not None:
            writer.add_rope_freq_base(float(self.rope["rope_theta"]))
        if self.rope_swa.get("rope_theta") is not None:
            writer.add_rope_freq_base_swa(float(self.rope_swa["rope_theta"]))
        if hp.get("rms_norm_eps") is not None:
            writer.add_layer_norm_rms_eps(float(hp["rms_norm_eps"]))
        if hp.get("layer_norm_eps") is not None:
            writer.add_layer_norm_eps(float(hp["layer_norm_eps"]))
        if hp.get("head_dim") is not None and self.writes_head_dim:
            writer.add_key_length(int(hp["head_dim"]))
            writer.add_value_length(int(hp["head_dim"]))

    def yarn_metadata(self, writer: gguf.GGUFWriter) -> None:
        """YaRN's parameters, under the keys and in the cases the converter writes them."""
        rope = self.rope
        writer.add_rope_scaling_type(gguf.RopeScalingType.YARN)
        writer.add_rope_scaling_factor(float(rope["factor"]))
        writer.add_rope_scaling_orig_ctx_len(int(rope["original_max_position_embeddings"]))
        if rope.get("extrapolation_factor") is not None:
            writer.add_rope_scaling_yarn_ext_factor(float(rope["extrapolation_factor"]))
        attention = rope.get("attention_factor", rope.get("attn_factor"))
        if attention is not None:
            writer.add_rope_scaling_yarn_attn_factor(float(attention))
        if rope.get("beta_fast") is not None:
            writer.add_rope_scaling_yarn_beta_fast(float(rope["beta_fast"]))
        if rope.get("beta_slow") is not None:
            writer.add_rope_scaling_yarn_beta_slow(float(rope["beta_slow"]))

    def skip(self, key: str) -> bool:
        """Tensors llama.cpp recomputes or never reads."""
        return key.endswith("rotary_emb.inv_freq") or key in self.skipped

    def sources(self, shapes: dict[str, tuple[int, ...]]) -> list[Source]:
        """The tensors of the file from the checkpoint's (not skipped) tensors and shapes:
        each under a name gguf-py's tensor map knows, the keys it is read from (several
        are stacked along a new first axis) and its shape. Most are one tensor each."""
        return [Source(key, (key,), shape) for key, shape in shapes.items()]

    def transform(self, key: str, tensor: torch.Tensor) -> torch.Tensor:
        """A weight (named as its :class:`Source`) as llama.cpp's graph for this family
        expects it."""
        return tensor

    def lora_pair(self, key: str, a: torch.Tensor, b: torch.Tensor
                  ) -> tuple[torch.Tensor, torch.Tensor]:
        """A LoRA update ``b @ a`` of the weight ``key`` as the pair that multiplies out
        to the update of :meth:`transform`'s weight: B's rows are the weight's rows, so
        they go through it; a family that reorders a weight's columns reorders A's."""
        return a, self.transform(key, b)

    def sliding_pattern(self) -> list[bool]:
        """Which layers attend through the sliding window, from ``layer_types``."""
        return [kind == "sliding_attention" for kind in self.hp["layer_types"]]

    def special_tokens(self, added: dict[str, int]) -> dict[str, int]:
        """Special-token ids (``bos``, ``eot`` ...) the converter sets for this family from
        the tokenizer's added tokens (text → id), where the tokenizer files set none."""
        return {}

    def extra_tensors(self) -> dict[str, np.ndarray]:
        """Tensors llama.cpp needs that the checkpoint does not hold (RoPE factors)."""
        return {}


def llama3_rope_factors(rope: dict[str, Any], head_dim: int) -> list[float]:
    """Llama 3.1's per-frequency RoPE factors (llama.cpp reads them as ``rope_freqs``).

    Mirrors transformers' ``_compute_llama3_parameters`` so llama.cpp rotates exactly
    like the model was trained; in float32 torch, as both it and llama.cpp's converter
    compute them, so the smoothed factors are the converter's to the bit.
    """
    import torch

    theta = float(rope.get("rope_theta", 10000.0))
    factor = float(rope.get("factor", 8.0))
    low = float(rope.get("low_freq_factor", 1.0))
    high = float(rope.get("high_freq_factor", 4.0))
    old_ctx = float(rope.get("original_max_position_embeddings", 8192))
    low_wavelen, high_wavelen = old_ctx / low, old_ctx / high
    factors = []
    for freq in 1.0 / theta ** (torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim):
        wavelen = 2 * math.pi / freq
        if wavelen < high_wavelen:
            factors.append(1.0)
        elif wavelen > low_wavelen:
            factors.append(factor)
        else:
            smooth = (old_ctx / wavelen - low) / (high - low)
            factors.append(float(1.0 / ((1 - smooth) / factor + smooth)))
    return factors


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
