"""What a GGUF file needs from a Hugging Face directory, family by family.

llama.cpp has one compute graph per architecture and reads its hyper-parameters from
GGUF metadata under fixed keys; a few families also store weights differently from
transformers (Llama's Q/K row order, Gemma's norm offset). Each :class:`Family` below
mirrors what llama.cpp's own converter (``convert_hf_to_gguf.py``, ``conversion/``) writes
for it, so llama.cpp computes what transformers computes; tests check both the logits
and parity with the converter. Anything else is refused before any tensor is read,
naming what was found and the converter command to run instead.
"""

from __future__ import annotations

import json
import math
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
    # checkpoint tensors llama.cpp never reads for this family
    skipped: ClassVar[tuple[str, ...]] = ()

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
    def head_dim(self) -> int:
        return int(self.hp.get("head_dim") or self.hp["hidden_size"] // self.n_head)

    def metadata(self, writer: gguf.GGUFWriter) -> None:
        """The hyper-parameters, as llama.cpp's converter writes them for most families."""
        hp = self.hp
        writer.add_block_count(self.n_layers)
        writer.add_context_length(int(hp["max_position_embeddings"]))
        writer.add_embedding_length(int(hp["hidden_size"]))
        writer.add_feed_forward_length(int(hp["intermediate_size"]))
        writer.add_head_count(self.n_head)
        if hp.get("num_key_value_heads") is not None:
            writer.add_head_count_kv(int(hp["num_key_value_heads"]))
        if self.rope_type == "linear":
            writer.add_rope_scaling_type(gguf.RopeScalingType.LINEAR)
            writer.add_rope_scaling_factor(float(self.rope["factor"]))
        if self.rope.get("rope_theta") is not None:
            writer.add_rope_freq_base(float(self.rope["rope_theta"]))
        if self.rope_swa.get("rope_theta") is not None:
            writer.add_rope_freq_base_swa(float(self.rope_swa["rope_theta"]))
        writer.add_layer_norm_rms_eps(float(hp["rms_norm_eps"]))
        if hp.get("head_dim") is not None:
            writer.add_key_length(int(hp["head_dim"]))
            writer.add_value_length(int(hp["head_dim"]))

    def skip(self, key: str) -> bool:
        """Tensors llama.cpp recomputes or never reads."""
        return key.endswith("rotary_emb.inv_freq") or key in self.skipped

    def transform(self, key: str, tensor: torch.Tensor) -> torch.Tensor:
        """A weight as llama.cpp's graph for this family expects it."""
        return tensor

    def extra_tensors(self) -> dict[str, np.ndarray]:
        """Tensors llama.cpp needs that the checkpoint does not hold (RoPE factors)."""
        return {}


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


class Qwen2(Family):
    model_types = ("qwen2",)
    arch = gguf.MODEL_ARCH.QWEN2


class Qwen3(Family):
    model_types = ("qwen3",)
    arch = gguf.MODEL_ARCH.QWEN3


class Gemma2(Family):
    model_types = ("gemma2",)
    arch = gguf.MODEL_ARCH.GEMMA2
    rope_types = ("default",)
    add_space_prefix = False
    skipped = ("lm_head.weight",)  # tied: llama.cpp reuses token_embd

    def metadata(self, writer: gguf.GGUFWriter) -> None:
        hp = self.hp
        writer.add_context_length(int(hp["max_position_embeddings"]))
        writer.add_embedding_length(int(hp["hidden_size"]))
        writer.add_block_count(self.n_layers)
        writer.add_feed_forward_length(int(hp["intermediate_size"]))
        writer.add_head_count(self.n_head)
        writer.add_head_count_kv(self.n_head_kv)
        writer.add_layer_norm_rms_eps(float(hp["rms_norm_eps"]))
        writer.add_key_length(int(hp["head_dim"]))
        writer.add_value_length(int(hp["head_dim"]))
        writer.add_attn_logit_softcapping(float(hp["attn_logit_softcapping"]))
        writer.add_final_logit_softcapping(float(hp["final_logit_softcapping"]))
        writer.add_sliding_window(int(hp["sliding_window"]))

    def transform(self, key: str, tensor: torch.Tensor) -> torch.Tensor:
        # transformers' Gemma RMSNorm multiplies by (1 + weight); llama.cpp by weight.
        return tensor + 1 if key.endswith("norm.weight") else tensor


class Gemma3(Gemma2):
    model_types = ("gemma3_text",)
    arch = gguf.MODEL_ARCH.GEMMA3
    rope_types = ("default", "linear")
    skipped = ()

    def metadata(self, writer: gguf.GGUFWriter) -> None:
        hp = self.hp
        Family.metadata(self, writer)
        # the converter's defaults where the config leaves a value out
        if self.rope.get("rope_theta") is None:
            writer.add_rope_freq_base(1_000_000.0)
        if hp.get("num_key_value_heads") is None:
            writer.add_head_count_kv(self.n_head_kv)
        if hp.get("final_logit_softcapping"):
            writer.add_final_logit_softcapping(float(hp["final_logit_softcapping"]))
        if hp.get("sliding_window_pattern") != 1:
            writer.add_sliding_window(int(hp["sliding_window"]))


class Phi3(Family):
    model_types = ("phi3",)
    arch = gguf.MODEL_ARCH.PHI3
    rope_types = ("default", "longrope", "su")
    spm_added_from_tokenizer_json = True

    @property
    def rope_dims(self) -> int:
        fraction = float(self.rope.get("partial_rotary_factor", 1.0))
        return int(fraction * int(self.hp["hidden_size"])) // self.n_head

    @property
    def original_context(self) -> int:
        value = self.rope.get("original_max_position_embeddings",
                              self.hp.get("original_max_position_embeddings"))
        if value is None:
            raise UserError(f"{self.where}: Phi-3 needs original_max_position_embeddings")
        return int(value)

    def metadata(self, writer: gguf.GGUFWriter) -> None:
        hp = self.hp
        writer.add_context_length(int(hp["max_position_embeddings"]))
        writer.add_rope_scaling_orig_ctx_len(self.original_context)
        writer.add_embedding_length(int(hp["hidden_size"]))
        writer.add_feed_forward_length(int(hp["intermediate_size"]))
        writer.add_block_count(self.n_layers)
        writer.add_head_count(self.n_head)
        writer.add_head_count_kv(self.n_head_kv)
        writer.add_layer_norm_rms_eps(float(hp["rms_norm_eps"]))
        writer.add_rope_dimension_count(self.rope_dims)
        writer.add_rope_freq_base(float(self.rope["rope_theta"]))
        # 0 tells llama.cpp "no sliding window" (how it tells Phi-4 from Phi-3).
        writer.add_sliding_window(int(hp.get("sliding_window") or 0))
        if self.rope.get("long_factor"):
            writer.add_rope_scaling_type(gguf.RopeScalingType.LONGROPE)
            scale = int(hp["max_position_embeddings"]) / self.original_context
            attn = (math.sqrt(1 + math.log(scale) / math.log(self.original_context))
                    if scale > 1.0 else 1.0)
            writer.add_rope_scaling_attn_factors(attn)

    def extra_tensors(self) -> dict[str, np.ndarray]:
        long, short = self.rope.get("long_factor"), self.rope.get("short_factor")
        if not long:
            return {}
        if not short or len(long) != len(short) or len(long) != self.rope_dims / 2:
            raise UserError(
                f"{self.where}: rope long_factor and short_factor must both have "
                f"{self.rope_dims // 2} entries"
            )
        names = gguf.TENSOR_NAMES
        return {
            names[gguf.MODEL_TENSOR.ROPE_FACTORS_LONG] + ".weight": np.asarray(long, np.float32),
            names[gguf.MODEL_TENSOR.ROPE_FACTORS_SHORT] + ".weight": np.asarray(short, np.float32),
        }


FAMILIES: tuple[type[Family], ...] = (Llama, Qwen2, Qwen3, Gemma2, Gemma3, Phi3)
SUPPORTED_MODEL_TYPES = tuple(t for family in FAMILIES for t in family.model_types)


def read_config(model_dir: Path) -> dict[str, Any]:
    """``config.json`` as transformers completes it (defaults filled in, RoPE normalised).

    llama.cpp's converter reads the same completed dictionary, so both see e.g. the
    ``head_dim`` a config leaves implicit.
    """
    from transformers import AutoConfig

    from lorapipe.plugin import from_pretrained

    path = model_dir / "config.json"
    if not path.is_file():
        raise UserError(
            f"{path}: not found; the GGUF exporter needs a Hugging Face model directory"
        )
    raw = json.loads(path.read_text(encoding="utf-8"))
    if raw.get("model_type") not in SUPPORTED_MODEL_TYPES:
        return raw  # to be refused by name; transformers may not even know the type
    # transformers' own class of a family the exporter knows, never the checkpoint's code
    return from_pretrained(AutoConfig, model_dir, trust_remote_code=False).to_dict()


def model_family(model_dir: Path) -> Family:
    """The family of the model in ``model_dir``; refuse one the exporter cannot write."""
    hp = read_config(model_dir)
    where = model_dir / "config.json"
    model_type = hp.get("model_type")
    for family in FAMILIES:
        if model_type in family.model_types:
            return family(hp, where)
    raise UserError(
        f"{where}: GGUF export supports model_type {', '.join(SUPPORTED_MODEL_TYPES)}; got "
        f"model_type {model_type!r} ({', '.join(hp.get('architectures') or ['?'])}). Remove "
        f"the gguf exporter from export.exporters and, after the run, convert with "
        f"llama.cpp: {CONVERT}"
    )


def llama3_rope_factors(rope: dict[str, Any], head_dim: int) -> list[float]:
    """Llama 3.1's per-frequency RoPE factors (llama.cpp reads them as ``rope_freqs``).

    Mirrors transformers' ``_compute_llama3_parameters`` so llama.cpp rotates exactly
    like the model was trained.
    """
    theta = float(rope.get("rope_theta", 10000.0))
    factor = float(rope.get("factor", 8.0))
    low = float(rope.get("low_freq_factor", 1.0))
    high = float(rope.get("high_freq_factor", 4.0))
    old_ctx = float(rope.get("original_max_position_embeddings", 8192))
    low_wavelen, high_wavelen = old_ctx / low, old_ctx / high
    factors = []
    for i in range(0, head_dim, 2):
        wavelen = 2 * math.pi * theta ** (i / head_dim)
        if wavelen < high_wavelen:
            factors.append(1.0)
        elif wavelen > low_wavelen:
            factors.append(factor)
        else:
            smooth = (old_ctx / wavelen - low) / (high - low)
            factors.append(1.0 / ((1 - smooth) / factor + smooth))
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
