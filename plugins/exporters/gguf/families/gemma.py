"""Gemma 2 and Gemma 3 (text): soft-capping, sliding windows, and RMSNorm weights stored
as the offset from 1 that transformers adds back at run time.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import gguf

from .base import Family

if TYPE_CHECKING:
    import torch


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
