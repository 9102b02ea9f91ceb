"""Qwen3.5, dense and MoE (text): Qwen3-Next's hybrid of Gated DeltaNet linear-attention
layers and gated full-attention layers, the latter rotated by interleaved M-RoPE.

llama.cpp's converter (``Qwen3_5TextModel``, ``Qwen3_5MoeTextModel``) stores the linear
attention's value heads in another order: transformers groups them by key head (k0's
v0 v1, then k1's), llama.cpp's graph wants them tiled (v0 of every key head, then v1 ...)
so that ggml broadcasts the key heads by plain repetition. It reorders whatever runs per
value head: the V rows of ``in_proj_qkv`` and V channels of ``conv1d``, the rows of
``in_proj_z``, ``in_proj_a``, ``in_proj_b``, ``A_log`` and ``dt_bias``, and the columns
of ``out_proj``. It also stores ``A_log`` as ``A = -exp(A_log)``, ``dt_bias`` as the
bias of ``ssm_dt``, the convolution kernel 2-D, and the RMSNorm weights as ``1 +
weight`` (transformers' Qwen3.5 norm adds the 1 at run time) except the linear
attention's gated norm, which multiplies by its weight as it is.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import gguf

from lorapipe.plugin import UserError

from .base import CONVERT, Family, Source
from .moe import expert_sources

if TYPE_CHECKING:
    import torch

# transformers' and the converter's sections where rope_parameters gives none
_MROPE_SECTION = [11, 11, 10]


class Qwen35(Family):
    model_types = ("qwen3_5_text",)
    arch = gguf.MODEL_ARCH.QWEN35
    rope_types = ("default",)

    def __init__(self, hp: dict[str, Any], where: Path) -> None:
        super().__init__(hp, where)
        sections = self.mrope_section
        if not _mrope_runs_text(sections, self.head_dim, self.rope_dims):
            raise UserError(
                f"{where}: Qwen3.5 rope_parameters.mrope_section {sections} with head_dim "
                f"{self.head_dim} and {self.rope_dims} rotated dimensions; llama.cpp asserts "
                "that the sections fit in a head and rotates text only in the time, height "
                "and width sections (by position 0 beyond them), so it would abort or compute "
                f"another model. Convert with llama.cpp: {CONVERT}"
            )

    @property
    def mrope_section(self) -> list[int]:
        return [int(n) for n in self.rope.get("mrope_section") or _MROPE_SECTION]

    @property
    def rope_dims(self) -> int:
        return int(self.head_dim * float(self.rope.get("partial_rotary_factor", 0.25)))

    def metadata(self, writer: gguf.GGUFWriter) -> None:
        super().metadata(writer)
        hp = self.hp
        writer.add_rope_dimension_sections([*self.mrope_section, 0, 0, 0][:4])
        writer.add_ssm_conv_kernel(int(hp["linear_conv_kernel_dim"]))
        writer.add_ssm_state_size(int(hp["linear_key_head_dim"]))
        writer.add_ssm_group_count(int(hp["linear_num_key_heads"]))
        writer.add_ssm_time_step_rank(int(hp["linear_num_value_heads"]))
        writer.add_ssm_inner_size(int(hp["linear_value_head_dim"])
                                  * int(hp["linear_num_value_heads"]))
        # the key of llama.cpp's gguf-py (add_recurrent_layers), which gguf 0.19 lacks
        writer.add_array(f"{writer.arch}.attention.recurrent_layers",
                         [kind == "linear_attention" for kind in hp["layer_types"]])
        writer.add_full_attention_interval(int(hp.get("full_attention_interval") or 4))
        writer.add_rope_dimension_count(self.rope_dims)

    def skip(self, key: str) -> bool:
        # the multi-token-prediction block released checkpoints carry: written as the
        # converter's --no-mtp does (llama.cpp runs the model without it)
        return super().skip(key) or key.startswith(("mtp.", "model.mtp."))

    def sources(self, shapes: dict[str, tuple[int, ...]]) -> list[Source]:
        sources = []
        for source in self.layer_sources(shapes):
            name, shape = source.name, source.shape
            if name.endswith("linear_attn.dt_bias"):
                name = name.removesuffix("dt_bias") + "dt_proj.bias"
            elif name.endswith("linear_attn.conv1d.weight"):
                shape = (shape[0], shape[-1])  # (channels, 1, width) read as 2-D
            sources.append(Source(name, source.keys, shape, source.rows))
        return sources

    def layer_sources(self, shapes: dict[str, tuple[int, ...]]) -> list[Source]:
        """The checkpoint's tensors before the renames above (the MoE stacks experts)."""
        return super().sources(shapes)

    def transform(self, key: str, tensor: torch.Tensor) -> torch.Tensor:
        hp = self.hp
        v_dim = int(hp["linear_value_head_dim"])
        qk_rows = 2 * int(hp["linear_key_head_dim"]) * int(hp["linear_num_key_heads"])
        if key.endswith(("linear_attn.in_proj_qkv.weight", "linear_attn.conv1d.weight")):
            tensor = (tensor.squeeze(1) if tensor.dim() == 3 else tensor).clone()
            tensor[qk_rows:] = self.tiled(tensor[qk_rows:], v_dim, 0)  # Q and K stay
            return tensor
        if key.endswith("linear_attn.in_proj_z.weight"):
            return self.tiled(tensor, v_dim, 0)
        if key.endswith(("linear_attn.in_proj_a.weight", "linear_attn.in_proj_b.weight",
                         "linear_attn.dt_proj.bias")):
            return self.tiled(tensor, 1, 0)
        if key.endswith("linear_attn.A_log"):
            return -self.tiled(tensor, 1, 0).exp()
        if key.endswith("linear_attn.out_proj.weight"):
            return self.tiled(tensor, v_dim, -1)
        if key.endswith("norm.weight") and not key.endswith("linear_attn.norm.weight"):
            return tensor + 1
        return tensor

    def lora_pair(self, key: str, a: torch.Tensor, b: torch.Tensor
                  ) -> tuple[torch.Tensor, torch.Tensor]:
        if key.endswith("linear_attn.out_proj.weight"):
            return self.transform(key, a), b  # its value heads are columns: A's
        return super().lora_pair(key, a, b)

    def tiled(self, tensor: torch.Tensor, head_dim: int, dim: int) -> torch.Tensor:
        """Value heads along ``dim`` from grouped by key head to tiled (the converter's
        ``_reorder_v_heads``)."""
        k_heads = int(self.hp["linear_num_key_heads"])
        moved = tensor.movedim(dim, 0)
        rest = moved.shape[1:]
        grouped = moved.reshape(k_heads, -1, head_dim, *rest)
        return grouped.transpose(0, 1).reshape(moved.shape).movedim(0, dim)


class Qwen35Moe(Qwen35):
    """Experts in every layer beside a shared expert with a sigmoid gate; transformers'
    router always renormalises the top-k weights, as llama.cpp's graph does."""

    model_types = ("qwen3_5_moe_text",)
    arch = gguf.MODEL_ARCH.QWEN35MOE

    @property
    def n_experts(self) -> int:
        return int(self.hp["num_experts"])

    def metadata(self, writer: gguf.GGUFWriter) -> None:
        super().metadata(writer)
        hp = self.hp
        self.expert_counts(writer)
        writer.add_expert_feed_forward_length(int(hp["moe_intermediate_size"]))
        writer.add_expert_shared_feed_forward_length(int(hp["shared_expert_intermediate_size"]))

    def layer_sources(self, shapes: dict[str, tuple[int, ...]]) -> list[Source]:
        return expert_sources(shapes, self.n_experts, self.where)


def _mrope_runs_text(sections: list[int], head_dim: int, rope_dims: int) -> bool:
    """Whether llama.cpp's interleaved M-RoPE rotates text as transformers does.

    transformers gives text the same position on every axis, so any sections rotate it
    plainly. ggml asserts the sections' sum fits a head, and gives rotated pair ``i`` the
    axis of sector ``i % sum``: time, height or width (text's position) where
    ``sector % 3`` is that axis and the sector lies below three times its section, else
    the fourth axis, which llama.cpp sets to 0 for text.
    """
    total = sum(sections)
    if total == 0 or total > head_dim:
        return False
    axes = (sections + [0, 0, 0])[:3]
    return all(any((pair % total) % 3 == axis and pair % total < 3 * axes[axis]
                   for axis in range(3))
               for pair in range(rope_dims // 2))
