"""Phi-3 (and Phi-4): fused ``qkv_proj``/``gate_up_proj`` kept fused, partial RoPE and
LongRoPE's per-frequency factors.
"""

from __future__ import annotations

import math

import gguf
import numpy as np

from lorapipe.plugin import UserError

from .base import Family


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
