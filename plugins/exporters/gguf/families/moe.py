"""Mixture-of-experts families: the experts of a layer as three stacked tensors
(``ffn_gate_exps``, ``ffn_up_exps``, ``ffn_down_exps``, one matrix per expert) and the
router as ``ffn_gate_inp``.

Checkpoints hold experts in one of two layouts, and the converter reads both: one module
per expert (``experts.0.gate_proj.weight`` ...; what the Hub's Qwen3-MoE files hold and
what transformers 5 still writes on save), stacked here as the converter stacks them; or
transformers 5's fused parameters, ``experts.gate_up_proj`` (experts, 2·intermediate,
hidden; gate rows first) and ``experts.down_proj`` (experts, hidden, intermediate),
whose gate and up halves llama.cpp keeps apart. gpt-oss stores its experts fused too,
but input-major and with gate and up interleaved column by column, plus expert biases.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import TYPE_CHECKING, Any

import gguf

from lorapipe.plugin import UserError

from .base import CONVERT, Family, Source

if TYPE_CHECKING:
    import torch

_PER_EXPERT = re.compile(r"(.+\.mlp\.experts)\.(\d+)\.(gate_proj|up_proj|down_proj)\.weight$")
_FUSED_GATE_UP = "mlp.experts.gate_up_proj"
_FUSED_DOWN = "mlp.experts.down_proj"


class Qwen3Moe(Family):
    model_types = ("qwen3_moe",)
    arch = gguf.MODEL_ARCH.QWEN3MOE

    def __init__(self, hp: dict[str, Any], where: Path) -> None:
        super().__init__(hp, where)
        # llama.cpp's graph renormalises the chosen experts' weights and puts experts in
        # every layer; a checkpoint that does neither would run as another model there
        if not hp.get("norm_topk_prob"):
            raise UserError(
                f"{where}: Qwen3-MoE with norm_topk_prob false; llama.cpp always renormalises "
                f"the top-k router weights and would compute a different model. Convert "
                f"with llama.cpp: {CONVERT}"
            )
        if hp.get("mlp_only_layers") or int(hp.get("decoder_sparse_step") or 1) != 1:
            raise UserError(
                f"{where}: Qwen3-MoE with dense layers (mlp_only_layers "
                f"{hp.get('mlp_only_layers')}, decoder_sparse_step "
                f"{hp.get('decoder_sparse_step')}); llama.cpp's graph has experts in every "
                f"layer. Convert with llama.cpp: {CONVERT}"
            )

    @property
    def n_experts(self) -> int:
        return int(self.hp.get("num_local_experts") or self.hp["num_experts"])

    def metadata(self, writer: gguf.GGUFWriter) -> None:
        super().metadata(writer)
        self.expert_counts(writer)
        writer.add_expert_feed_forward_length(int(self.hp["moe_intermediate_size"]))

    def sources(self, shapes: dict[str, tuple[int, ...]]) -> list[Source]:
        return expert_sources(shapes, self.n_experts, self.where)


class GptOss(Family):
    model_types = ("gpt_oss",)
    arch = gguf.MODEL_ARCH.GPT_OSS
    rope_types = ("default", "yarn")
    # what llama.cpp's graph fixes: sliding on even layers, the clamped SwiGLU's constants
    _SWIGLU = {"swiglu_alpha": 1.702, "swiglu_limit": 7.0}

    def __init__(self, hp: dict[str, Any], where: Path) -> None:
        super().__init__(hp, where)
        expected = [i % 2 == 0 for i in range(self.n_layers)]
        if self.sliding_pattern() != expected:
            raise UserError(
                f"{where}: gpt-oss layer_types {hp['layer_types']} differ from the pattern "
                "llama.cpp fixes for this architecture (sliding, global, sliding, ...); "
                f"llama.cpp would compute a different model. Convert with llama.cpp: {CONVERT}"
            )
        changed = {k: hp.get(k) for k, v in self._SWIGLU.items() if hp.get(k, v) != v}
        if changed:
            raise UserError(
                f"{where}: gpt-oss with {changed}; llama.cpp's graph fixes {self._SWIGLU} "
                f"and would compute a different model. Convert with llama.cpp: {CONVERT}"
            )

    @property
    def n_experts(self) -> int:
        return int(self.hp["num_local_experts"])

    def metadata(self, writer: gguf.GGUFWriter) -> None:
        super().metadata(writer)
        self.expert_counts(writer)
        writer.add_sliding_window(int(self.hp["sliding_window"]))
        writer.add_expert_feed_forward_length(int(self.hp["intermediate_size"]))

    def sources(self, shapes: dict[str, tuple[int, ...]]) -> list[Source]:
        sources = []
        for key, shape in shapes.items():
            base = key.removesuffix("gate_up_proj").removesuffix("gate_up_proj_bias")
            if key.endswith(_FUSED_GATE_UP):  # (experts, hidden, 2·intermediate)
                experts, hidden, rows = shape
                half = (experts, rows // 2, hidden)
                sources += [Source(base + "gate_proj.weight", (key,), half),
                            Source(base + "up_proj.weight", (key,), half)]
            elif key.endswith(_FUSED_GATE_UP + "_bias"):  # (experts, 2·intermediate)
                half = (shape[0], shape[1] // 2)
                sources += [Source(base + "gate_proj.bias", (key,), half),
                            Source(base + "up_proj.bias", (key,), half)]
            elif key.endswith(_FUSED_DOWN):  # (experts, intermediate, hidden)
                sources.append(Source(key + ".weight", (key,), (shape[0], shape[2], shape[1])))
            elif key.endswith(_FUSED_DOWN + "_bias"):
                sources.append(Source(key.removesuffix("_bias") + ".bias", (key,), shape))
            elif key.endswith(".sinks"):
                sources.append(Source(key + ".weight", (key,), shape))
            else:
                sources.append(Source(key, (key,), shape))
        return sources

    def transform(self, key: str, tensor: torch.Tensor) -> torch.Tensor:
        if key.endswith(("experts.gate_proj.weight", "experts.up_proj.weight",
                         "experts.down_proj.weight")):
            tensor = tensor.transpose(-1, -2)  # stored input-major
        if key.endswith(("experts.gate_proj.weight", "experts.gate_proj.bias")):
            return tensor[..., ::2, :] if tensor.dim() == 3 else tensor[..., ::2]
        if key.endswith(("experts.up_proj.weight", "experts.up_proj.bias")):
            return tensor[..., 1::2, :] if tensor.dim() == 3 else tensor[..., 1::2]
        return tensor


class DeepseekV3(Family):
    """DeepSeek-V3 as llama.cpp's ``deepseek2``: multi-head latent attention (MLA), a few
    dense leading layers, then routed experts with a shared expert and a sigmoid router
    with a score-correction bias (``exp_probs_b``).

    MLA is written as the converter writes it for llama.cpp's absorbed attention: one KV
    head of ``kv_lora_rank + qk_rope_head_dim``, and ``kv_b_proj`` split per head into
    ``k_b`` (transposed) and ``v_b``.
    """

    model_types = ("deepseek_v3",)
    arch = gguf.MODEL_ARCH.DEEPSEEK2
    rope_types = ("default", "yarn")
    writes_head_dim = False  # the key/value lengths are MLA's, written below
    # found by test: on the first three the adapter GGUF leaves llama.cpp's logits the base's
    lora_refused = {**dict.fromkeys(("q_a_proj", "q_b_proj", "kv_a_proj_with_mqa"),
                                    "llama.cpp's graph applies no --lora pair to it"),
                    "kv_b_proj": "llama.cpp splits it per head into k_b and v_b, which a "
                                 "LoRA pair cannot express"}

    @property
    def n_head_kv(self) -> int:
        return 1  # MLA runs as multi-query attention over the compressed KV

    @property
    def n_experts(self) -> int:
        return int(self.hp["n_routed_experts"])

    def metadata(self, writer: gguf.GGUFWriter) -> None:
        super().metadata(writer)
        hp = self.hp
        self.expert_counts(writer)
        if hp.get("n_group") is not None:
            writer.add_expert_group_count(int(hp["n_group"]))
        if hp.get("topk_group") is not None:
            writer.add_expert_group_used_count(int(hp["topk_group"]))
        # transformers' DeepSeek-V3 router is a sigmoid whatever config.json says; without
        # the key llama.cpp would read an old DeepSeek-V2 file's softmax
        writer.add_expert_gating_func(gguf.ExpertGatingFuncType.SIGMOID)
        writer.add_leading_dense_block_count(int(hp.get("first_k_dense_replace") or 0))
        writer.add_vocab_size(self.vocab_size)
        if hp.get("q_lora_rank") is not None:
            writer.add_q_lora_rank(int(hp["q_lora_rank"]))
        rank, rope = int(hp["kv_lora_rank"]), int(hp["qk_rope_head_dim"])
        writer.add_kv_lora_rank(rank)
        writer.add_key_length(rank + rope)
        writer.add_value_length(rank)
        writer.add_key_length_mla(int(hp["qk_nope_head_dim"]) + rope)
        writer.add_value_length_mla(int(hp["v_head_dim"]))
        writer.add_expert_feed_forward_length(int(hp["moe_intermediate_size"]))
        writer.add_expert_shared_count(int(hp.get("n_shared_experts") or 0))
        if hp.get("routed_scaling_factor") is not None:
            writer.add_expert_weights_scale(float(hp["routed_scaling_factor"]))
        if hp.get("norm_topk_prob"):
            writer.add_expert_weights_norm(True)
        writer.add_rope_dimension_count(rope)
        if self.rope.get("mscale_all_dim") is not None:
            # the converter's legacy factor for this family (its TAG_DEEPSEEK2_YARN_LOG_MUL_FIX)
            writer.add_rope_scaling_yarn_log_mul(0.1 * float(self.rope["mscale_all_dim"]))

    def sources(self, shapes: dict[str, tuple[int, ...]]) -> list[Source]:
        hp = self.hp
        heads, nope, value = self.n_head, int(hp["qk_nope_head_dim"]), int(hp["v_head_dim"])
        sources = []
        for source in expert_sources(shapes, self.n_experts, self.where):
            if source.name.endswith("e_score_correction_bias"):  # the router's, as a bias
                name = source.name.replace("e_score_correction_bias", "e_score_correction.bias")
                sources.append(Source(name, source.keys, source.shape))
                continue
            if not source.name.endswith("kv_b_proj.weight"):
                sources.append(source)
                continue
            rank = source.shape[-1]
            base = source.name.removesuffix("kv_b_proj.weight")
            sources += [Source(base + "k_b_proj.weight", source.keys, (heads, rank, nope)),
                        Source(base + "v_b_proj.weight", source.keys, (heads, value, rank))]
        return sources

    def transform(self, key: str, tensor: torch.Tensor) -> torch.Tensor:
        if not key.endswith(("k_b_proj.weight", "v_b_proj.weight")):
            return tensor
        nope = int(self.hp["qk_nope_head_dim"])
        per_head = tensor.view(self.n_head, -1, tensor.shape[-1])  # (heads, nope + v, rank)
        if key.endswith("k_b_proj.weight"):
            return per_head[:, :nope].transpose(1, 2).contiguous()
        return per_head[:, nope:].contiguous()


def expert_sources(shapes: dict[str, tuple[int, ...]], n_experts: int, where: Path
                   ) -> list[Source]:
    """Each layer's experts as three stacks named ``...mlp.experts.{gate,up,down}_proj``
    (gguf-py maps them to ``ffn_*_exps``), from either layout; other tensors as they are."""
    stacks: dict[str, dict[int, str]] = {}
    order: list[str] = []  # file tensors in checkpoint order, a stack where its first key was
    for key in shapes:
        match = _PER_EXPERT.match(key)
        if match is None:
            order.append(key)
            continue
        name = f"{match[1]}.{match[3]}.weight"
        if name not in stacks:
            order.append(name)
        stacks.setdefault(name, {})[int(match[2])] = key
    sources = []
    for item in order:
        if item in stacks:
            keys = tuple(stacks[item].get(i, "") for i in range(n_experts))
            found = {shapes[k] for k in keys if k}
            if "" in keys or len(keys) != len(stacks[item]) or len(found) != 1:
                raise UserError(f"{where}: the checkpoint's {item.removesuffix('.weight')} "
                                f"tensors are not {n_experts} experts of one shape")
            sources.append(Source(item, keys, (n_experts, *found.pop())))
        elif item.endswith(_FUSED_GATE_UP):
            experts, rows, hidden = shapes[item]
            half, base = rows // 2, item.removesuffix("gate_up_proj")
            sources += [Source(base + "gate_proj.weight", (item,), (experts, half, hidden),
                               slice(0, half)),
                        Source(base + "up_proj.weight", (item,), (experts, half, hidden),
                               slice(half, rows))]
        elif item.endswith(_FUSED_DOWN):
            sources.append(Source(item + ".weight", (item,), shapes[item]))
        else:
            sources.append(Source(item, (item,), shapes[item]))
    return sources
