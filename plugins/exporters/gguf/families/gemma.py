"""Gemma 2, 3 and 4 (text): soft-capping, sliding windows, and (2 and 3) RMSNorm weights
stored as the offset from 1 that transformers adds back at run time. Gemma 4 adds
per-layer input embeddings, wider heads on its global layers with "proportional" partial
RoPE, a tokenizer kind of its own, and (the MoE release) routed experts beside the MLP.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import gguf
import numpy as np

from .base import Family, Source

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


class Gemma4(Family):
    model_types = ("gemma4_text",)
    arch = gguf.MODEL_ARCH.GEMMA4
    rope_types = ("proportional",)  # the global layers'; the sliding ones rotate plainly
    add_space_prefix = False
    tokenizer_model = "gemma4"
    experts_used_key = "top_k_experts"
    visible_tokens = frozenset({"<|channel>", "<channel|>", "<|tool_call>", "<tool_call|>",
                                "<|tool_response>", "<tool_response|>", '<|"|>'})
    # found by test: the adapter GGUF on it leaves llama.cpp's logits those of the base
    lora_refused = {"per_layer_model_projection": "llama.cpp's graph applies no --lora pair "
                                                  "to it"}

    @property
    def n_experts(self) -> int:
        return int(self.hp.get("num_experts") or 0)

    def _global(self, own_key: str, layer_key: str) -> Any:
        """A global-attention layer's value: under its own key, or in per_layer_config for
        the first full_attention layer (how transformers 5 saves it), as the converter
        looks it up."""
        if self.hp.get(own_key) is not None:
            return self.hp[own_key]
        for index, config in (self.hp.get("per_layer_config") or {}).items():
            if self.hp["layer_types"][int(index)] == "full_attention" and layer_key in config:
                return config[layer_key]
        return None

    @property
    def head_dim_full(self) -> int:
        return int(self._global("global_head_dim", "head_dim"))

    def metadata(self, writer: gguf.GGUFWriter) -> None:
        hp = self.hp
        head_dim_full = self.head_dim_full
        swa = self.sliding_pattern()
        writer.add_block_count(self.n_layers)
        writer.add_context_length(int(hp["max_position_embeddings"]))
        writer.add_embedding_length(int(hp["hidden_size"]))
        n_ff = int(hp["intermediate_size"])
        shared = int(hp.get("num_kv_shared_layers") or 0)
        if hp.get("use_double_wide_mlp"):
            first_shared = self.n_layers - shared
            writer.add_feed_forward_length([n_ff if i < first_shared else 2 * n_ff
                                            for i in range(self.n_layers)])
        else:
            writer.add_feed_forward_length(n_ff)
        writer.add_head_count(self.n_head)
        kv_full = self._global("num_global_key_value_heads", "num_key_value_heads")
        if kv_full is not None:
            writer.add_head_count_kv([self.n_head_kv if s else int(kv_full) for s in swa])
        else:
            writer.add_head_count_kv(self.n_head_kv)
        writer.add_rope_freq_base(float(self.rope.get("rope_theta", 1_000_000.0)))
        if self.rope_swa.get("rope_theta") is not None:
            writer.add_rope_freq_base_swa(float(self.rope_swa["rope_theta"]))
        writer.add_layer_norm_rms_eps(float(hp.get("rms_norm_eps", 1e-6)))
        writer.add_key_length(head_dim_full)
        writer.add_value_length(head_dim_full)
        if hp.get("final_logit_softcapping"):
            writer.add_final_logit_softcapping(float(hp["final_logit_softcapping"]))
        if hp.get("sliding_window_pattern") != 1:
            writer.add_sliding_window(int(hp["sliding_window"]))
        writer.add_shared_kv_layers(shared)
        writer.add_embedding_length_per_layer_input(int(hp.get("hidden_size_per_layer_input")
                                                        or 0))
        writer.add_sliding_window_pattern(swa)
        writer.add_key_length_swa(self.head_dim)
        writer.add_value_length_swa(self.head_dim)
        if hp.get("num_experts") is not None:  # the MoE release: experts beside the MLP
            self.expert_counts(writer)
        if hp.get("moe_intermediate_size") is not None:
            writer.add_expert_feed_forward_length(int(hp["moe_intermediate_size"]))
        writer.add_rope_dimension_count(head_dim_full)
        fraction = float(hp["rope_parameters"].get("partial_rotary_factor", 1.0))
        writer.add_rope_dimension_count_swa(int(self.head_dim * fraction))

    def sources(self, shapes: dict[str, tuple[int, ...]]) -> list[Source]:
        # two scalars per layer and the fused experts (gate and up kept together, as
        # llama.cpp's graph reads them) are saved without a ".weight"; the router's input
        # scale and its per-expert output scales become scales of the router and of the
        # experts' down projection
        renamed = {"per_dim_scale": "per_dim_scale.weight", "layer_scalar": "layer_scalar.weight",
                   "experts.gate_up_proj": "experts.gate_up_proj.weight",
                   "experts.down_proj": "experts.down_proj.weight",
                   "router.scale": "router.proj.scale",
                   "router.per_expert_scale": "experts.down_proj.scale"}
        sources = []
        for source in super().sources(shapes):
            ending = next((e for e in renamed if source.name.endswith("." + e)), None)
            name = source.name if ending is None else (source.name.removesuffix(ending)
                                                       + renamed[ending])
            sources.append(Source(name, source.keys, source.shape))
        return sources

    def extra_tensors(self) -> dict[str, np.ndarray]:
        """The global layers rotate a fraction of each head's pairs; llama.cpp's NeoX RoPE
        rotates the first ones, so the others get a frequency factor of 1e30 (no turn)."""
        head_dim_full = self.head_dim_full
        rotated = int(head_dim_full * float(self.rope["partial_rotary_factor"]) / 2)
        factors = [1.0] * rotated + [1e30] * (head_dim_full // 2 - rotated)
        name = gguf.TENSOR_NAMES[gguf.MODEL_TENSOR.ROPE_FREQS] + ".weight"
        return {name: np.asarray(factors, np.float32)}
