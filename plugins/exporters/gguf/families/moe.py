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
        writer.add_expert_count(self.n_experts)
        writer.add_expert_used_count(int(self.hp["num_experts_per_tok"]))
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
        writer.add_expert_count(self.n_experts)
        writer.add_expert_used_count(int(self.hp["num_experts_per_tok"]))
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
