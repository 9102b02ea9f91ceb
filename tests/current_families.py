"""Tiny random-weight models of the late-2026 families: mixture-of-experts, hybrid
(linear attention, Mamba, short convolutions) and the newer dense architectures.

Each shape keeps what makes its family different — fused 3-D expert parameters, shared
experts, MLA's compressed KV, per-layer attention types and sliding windows, NoPE layers,
Gemma 4's per-layer input embeddings — at sizes that train in seconds, around a real
tokenizer from llama.cpp's tree (``llama_cpp_material.real_tokenizer``).
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from llama_cpp_material import real_tokenizer
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

SHAPE = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
             num_key_value_heads=2, max_position_embeddings=512)
MOE = dict(num_experts=4, num_experts_per_tok=2, moe_intermediate_size=32)
LINEAR_ATTENTION = dict(layer_types=["linear_attention", "full_attention"],
                        linear_num_key_heads=2, linear_num_value_heads=4,
                        linear_key_head_dim=16, linear_value_head_dim=16,
                        linear_conv_kernel_dim=4)
# Qwen3.5's M-RoPE in the real proportions (head_dim 256, a quarter rotated, sections
# [11, 11, 10] filling the 32 rotated pairs): llama.cpp asserts on sections wider than a head
QWEN35 = dict(head_dim=64, rope_parameters=dict(
    rope_type="default", rope_theta=10000000.0, partial_rotary_factor=0.25,
    mrope_section=[3, 3, 2], mrope_interleaved=True), **LINEAR_ATTENTION)
SLIDING = dict(sliding_window=128, layer_types=["sliding_attention", "full_attention"])
ATTENTION = ["q_proj", "k_proj", "v_proj", "o_proj"]
MLP = ["gate_proj", "up_proj", "down_proj"]
EXPERTS = ["experts.gate_up_proj", "experts.down_proj"]


@dataclass(frozen=True)
class Shape:
    """One family: its config beyond ``SHAPE``, its tokenizer, and what the default
    detector adapts (module names and fused expert parameters)."""

    model_type: str
    config: dict[str, Any]
    tokenizer: str
    modules: list[str]
    parameters: list[str] = field(default_factory=list)


FAMILIES: dict[str, Shape] = {
    # Qwen3-MoE ships norm_topk_prob: true (llama.cpp always renormalises the top k)
    "qwen3_moe": Shape("qwen3_moe", dict(head_dim=16, **MOE, norm_topk_prob=True), "qwen3",
                       ATTENTION, EXPERTS),
    "qwen3_5": Shape("qwen3_5_text", QWEN35, "qwen35",
                     [*ATTENTION, "in_proj_qkv", "in_proj_z", "in_proj_b", "in_proj_a",
                      "out_proj", *MLP]),
    "qwen3_5_moe": Shape("qwen3_5_moe_text", dict(**QWEN35, **MOE,
                                                  shared_expert_intermediate_size=32),
                         "qwen35", [*ATTENTION, "in_proj_qkv", "in_proj_z", "in_proj_b",
                                   "in_proj_a", "out_proj", *MLP], EXPERTS),
    "gpt_oss": Shape("gpt_oss", dict(head_dim=16, num_local_experts=4, num_experts_per_tok=2,
                                     **SLIDING), "llama3", ATTENTION, EXPERTS),
    "gemma4": Shape("gemma4_text", dict(head_dim=16, global_head_dim=32, **SLIDING,
                                        hidden_size_per_layer_input=16),
                    "gemma4", [*ATTENTION, *MLP, "per_layer_input_gate", "per_layer_projection",
                              "per_layer_model_projection"]),
    "gemma4_moe": Shape("gemma4_text", dict(head_dim=16, global_head_dim=32, **SLIDING,
                                            hidden_size_per_layer_input=16,
                                            enable_moe_block=True, num_experts=4,
                                            top_k_experts=2, moe_intermediate_size=32),
                        "gemma4", [*ATTENTION, *MLP, "per_layer_input_gate",
                                  "per_layer_projection", "per_layer_model_projection"],
                        EXPERTS),
    # Llama 4: NoPE and full attention on every 4th layer, 8192-token chunks on the others
    # (what llama.cpp fixes), Llama 3 RoPE scaling (with smoothed frequencies, which
    # Scout's low = high factors have none of), experts on every 2nd layer (Maverick's
    # interleave: dense and MoE layers both)
    "llama4": Shape("llama4_text", dict(head_dim=16, num_local_experts=4, num_experts_per_tok=1,
                                        intermediate_size_mlp=128, interleave_moe_layer_step=2,
                                        num_hidden_layers=4, no_rope_layers=[1, 1, 1, 0],
                                        attention_chunk_size=8192, rope_parameters=dict(
                                            rope_type="llama3", rope_theta=500000.0,
                                            factor=8.0, low_freq_factor=1.0,
                                            high_freq_factor=4.0,
                                            original_max_position_embeddings=256)),
                    "llama3", [*ATTENTION, *MLP], EXPERTS),
    "deepseek_v3": Shape("deepseek_v3", dict(num_key_value_heads=4, n_routed_experts=4,
                                             num_experts_per_tok=2, moe_intermediate_size=32,
                                             n_shared_experts=1, first_k_dense_replace=1,
                                             kv_lora_rank=32, q_lora_rank=48,
                                             qk_rope_head_dim=8, qk_nope_head_dim=16,
                                             v_head_dim=16, n_group=2, topk_group=1),
                         # MLP names qualified: peft reads bare ones as the experts
                         "deepseek", ["q_a_proj", "q_b_proj", "kv_a_proj_with_mqa", "kv_b_proj",
                                    "o_proj", "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj",
                                    "shared_experts.gate_proj", "shared_experts.up_proj",
                                    "shared_experts.down_proj"], EXPERTS),
    "granite": Shape("granite", dict(embedding_multiplier=12.0, logits_scaling=8.0,
                                     residual_multiplier=0.22, attention_multiplier=0.0078125),
                     "llama3", [*ATTENTION, *MLP]),
    "granitemoehybrid": Shape("granitemoehybrid", dict(
        num_local_experts=4, num_experts_per_tok=2, shared_intermediate_size=64,
        layer_types=["mamba", "attention"], mamba_n_heads=4, mamba_d_head=32, mamba_d_state=16,
        mamba_n_groups=1, mamba_expand=2, mamba_d_conv=4),
        "llama3", [*ATTENTION, "in_proj", "out_proj", "input_linear", "output_linear"],
        EXPERTS),
    # Granite 4.0-H-Micro/-1B: Mamba 2 and attention without experts (here with two SSM
    # groups, whose norm is per group)
    "granitehybrid_dense": Shape("granitemoehybrid", dict(
        num_local_experts=0, num_experts_per_tok=0, shared_intermediate_size=64,
        layer_types=["mamba", "attention"], mamba_n_heads=4, mamba_d_head=32, mamba_d_state=16,
        mamba_n_groups=2, mamba_expand=2, mamba_d_conv=4),
        "llama3", [*ATTENTION, "in_proj", "out_proj", "input_linear", "output_linear"]),
    "olmo2": Shape("olmo2", {}, "llama3", [*ATTENTION, *MLP]),
    "glm4": Shape("glm4", dict(head_dim=16), "llama3", [*ATTENTION, "gate_up_proj", "down_proj"]),
    # Command R7B: three sliding-window layers in four (the pattern llama.cpp fixes)
    "cohere2": Shape("cohere2", dict(head_dim=16, sliding_window=128, num_hidden_layers=4,
                                     layer_types=["sliding_attention"] * 3 + ["full_attention"]),
                     "command-r", [*ATTENTION, *MLP]),
    # EXAONE 4.0 1.2B: global attention only (the 32B's 3:1 sliding pattern llama.cpp
    # reads for 64 layers only)
    "exaone4": Shape("exaone4", dict(head_dim=16, sliding_window=None,
                                     layer_types=["full_attention"] * 2),
                     "llama3", [*ATTENTION, *MLP]),
    "lfm2": Shape("lfm2", dict(layer_types=["conv", "full_attention"], block_ff_dim=128,
                               block_auto_adjust_ff_dim=False, conv_L_cache=3),
                  "llama3", ["q_proj", "k_proj", "v_proj", "out_proj", "in_proj", "w1", "w3",
                             "w2"]),
    "seed_oss": Shape("seed_oss", dict(head_dim=16), "llama3", [*ATTENTION, *MLP]),
    # SmolLM3: NoPE on every fourth layer
    "smollm3": Shape("smollm3", dict(num_hidden_layers=4, no_rope_layers=[1, 1, 1, 0]),
                     "llama3", [*ATTENTION, *MLP]),
}


def build_family(name: str, out: Path) -> Path:
    """A seeded tiny model of ``name``'s shape with its real tokenizer files."""
    shape = FAMILIES[name]
    shutil.copytree(real_tokenizer(shape.tokenizer), out)
    tokenizer = AutoTokenizer.from_pretrained(out)
    vocab = len(tokenizer)
    settings = {**SHAPE, **shape.config, "vocab_size": vocab,
                "bos_token_id": tokenizer.bos_token_id, "eos_token_id": tokenizer.eos_token_id,
                "pad_token_id": tokenizer.pad_token_id}
    if shape.model_type == "gemma4_text":
        settings["vocab_size_per_layer_input"] = vocab
    config = AutoConfig.for_model(shape.model_type, **settings)
    torch.manual_seed(0)
    AutoModelForCausalLM.from_config(config, dtype=torch.float32).save_pretrained(out)
    return out
