"""Families whose layers are not all attention: LFM2's gated short-convolution layers and
Granite 4's Mamba 2 layers between attention layers. llama.cpp tells the kinds apart by a
per-layer KV head count of 0 for a convolution or state-space layer, and runs the
convolution from a 2-D kernel.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import TYPE_CHECKING, Any

import gguf

from lorapipe.plugin import UserError

from .base import CONVERT, Family, Source
from .llama import Granite, granite_scales

if TYPE_CHECKING:
    import torch


class Lfm2(Family):
    model_types = ("lfm2",)
    arch = gguf.MODEL_ARCH.LFM2
    rope_types = ("default",)

    @property
    def feed_forward_length(self) -> int:
        """LFM2's feed-forward width, adjusted the way its config says (as the converter
        and transformers compute it) when ``block_auto_adjust_ff_dim`` is set."""
        hp = self.hp
        width = int(hp.get("block_ff_dim") or hp["intermediate_size"])
        if hp.get("block_auto_adjust_ff_dim"):
            width = int(2 * width / 3)
            if hp.get("block_ffn_dim_multiplier") is not None:
                width = int(float(hp["block_ffn_dim_multiplier"]) * width)
            multiple = int(hp["block_multiple_of"])
            width = multiple * ((width + multiple - 1) // multiple)
        return width

    def metadata(self, writer: gguf.GGUFWriter) -> None:
        hp = self.hp
        writer.add_block_count(self.n_layers)
        writer.add_context_length(int(hp["max_position_embeddings"]))
        writer.add_embedding_length(int(hp["hidden_size"]))
        writer.add_feed_forward_length(self.feed_forward_length)
        writer.add_head_count(self.n_head)
        writer.add_head_count_kv([0 if kind == "conv" else self.n_head_kv
                                  for kind in hp["layer_types"]])
        if self.rope.get("rope_theta") is not None:
            writer.add_rope_freq_base(float(self.rope["rope_theta"]))
        writer.add_layer_norm_rms_eps(float(hp["norm_eps"]))
        writer.add_vocab_size(self.vocab_size)
        writer.add_shortconv_l_cache(int(hp["conv_L_cache"]))

    def sources(self, shapes: dict[str, tuple[int, ...]]) -> list[Source]:
        # the convolution kernel (channels, 1, width) is read as (channels, width)
        return [Source(s.name, s.keys, tuple(n for i, n in enumerate(s.shape) if i != 1))
                if "conv.conv" in s.name else s for s in super().sources(shapes)]

    def transform(self, key: str, tensor: torch.Tensor) -> torch.Tensor:
        return tensor.squeeze(1) if "conv.conv" in key else tensor


_LAYER = re.compile(r"\.layers\.(\d+)\.")
_NAME = gguf.TENSOR_NAMES


class GraniteHybrid(Granite):
    """Granite 4 hybrid (``granitemoehybrid``): Mamba 2 layers and a few attention layers
    without positional encoding, each followed by routed experts beside a shared MLP (or
    by the shared MLP alone in the dense releases), with Granite's four multipliers.

    The checkpoint fuses gate and up (``input_linear``, gate rows first), which llama.cpp
    keeps apart; Mamba's ``A`` is stored as ``A_log``, llama.cpp reads ``-exp(A_log)``.
    """

    model_types = ("granitemoehybrid",)
    arch = gguf.MODEL_ARCH.GRANITE_HYBRID
    rope_types = ("default",)

    def __init__(self, hp: dict[str, Any], where: Path) -> None:
        super().__init__(hp, where)
        # llama.cpp runs RoPE in this architecture only when told it was fine-tuned with
        # it, which the converter never says of a model with Mamba layers
        if hp.get("position_embedding_type") not in (None, "nope"):
            raise UserError(
                f"{where}: Granite 4 hybrid with position_embedding_type "
                f"{hp['position_embedding_type']!r}; llama.cpp's file of it runs without "
                f"positions and would compute a different model. Convert with llama.cpp: "
                f"{CONVERT}"
            )

    @property
    def attention_layers(self) -> list[bool]:
        # transformers 5 names the kinds linear_attention/full_attention, released configs
        # mamba/attention
        return [kind in ("attention", "full_attention") for kind in self.hp["layer_types"]]

    @property
    def n_experts(self) -> int:
        return int(self.hp.get("num_local_experts") or 0)

    @property
    def inner_size(self) -> int:
        return int(self.hp["mamba_expand"]) * int(self.hp["hidden_size"])

    def metadata(self, writer: gguf.GGUFWriter) -> None:
        hp = self.hp
        writer.add_block_count(self.n_layers)
        writer.add_context_length(2**20)  # the converter's: no positions, no fixed context
        writer.add_embedding_length(int(hp["hidden_size"]))
        # without experts the shared MLP is the layer's MLP, and llama.cpp sizes it by this
        # key (the converter writes intermediate_size, which the releases set equal)
        writer.add_feed_forward_length(int(hp["shared_intermediate_size"] if not self.n_experts
                                           else hp["intermediate_size"]))
        writer.add_head_count(self.n_head)
        writer.add_head_count_kv([self.n_head_kv if attention else 0
                                  for attention in self.attention_layers])
        writer.add_rope_freq_base(float(self.rope["rope_theta"]))
        writer.add_layer_norm_rms_eps(float(hp["rms_norm_eps"]))
        self.expert_counts(writer)  # the dense releases: 0 experts
        writer.add_vocab_size(self.vocab_size)
        writer.add_rope_dimension_count(self.head_dim)
        granite_scales(writer, hp)
        if hp.get("shared_intermediate_size"):
            writer.add_expert_shared_feed_forward_length(int(hp["shared_intermediate_size"]))
        writer.add_ssm_conv_kernel(int(hp["mamba_d_conv"]))
        writer.add_ssm_state_size(int(hp["mamba_d_state"]))
        writer.add_ssm_group_count(int(hp["mamba_n_groups"]))
        writer.add_ssm_inner_size(self.inner_size)
        writer.add_ssm_time_step_rank(int(hp["mamba_n_heads"]))
        writer.add_rope_scaling_finetuned(False)

    def sources(self, shapes: dict[str, tuple[int, ...]]) -> list[Source]:
        experts = bool(self.n_experts)
        shared = ((gguf.MODEL_TENSOR.FFN_GATE_SHEXP, gguf.MODEL_TENSOR.FFN_UP_SHEXP) if experts
                  else (gguf.MODEL_TENSOR.FFN_GATE, gguf.MODEL_TENSOR.FFN_UP))
        sources = []
        for key, shape in shapes.items():
            layer = _LAYER.search(key)
            if key.endswith(("block_sparse_moe.input_linear.weight",
                             "shared_mlp.input_linear.weight")):
                gate, up = ((gguf.MODEL_TENSOR.FFN_GATE_EXP, gguf.MODEL_TENSOR.FFN_UP_EXP)
                            if "block_sparse_moe" in key else shared)
                rows = shape[-2]
                half = (*shape[:-2], rows // 2, shape[-1])
                sources += [Source(_NAME[gate].format(bid=layer[1]) + ".weight", (key,), half,
                                   slice(0, rows // 2)),
                            Source(_NAME[up].format(bid=layer[1]) + ".weight", (key,), half,
                                   slice(rows // 2, rows))]
            elif key.endswith("shared_mlp.output_linear.weight") and not experts:
                name = _NAME[gguf.MODEL_TENSOR.FFN_DOWN].format(bid=layer[1]) + ".weight"
                sources.append(Source(name, (key,), shape))
            elif key.endswith("mamba.conv1d.weight"):  # (channels, 1, width): read 2-D
                sources.append(Source(key, (key,), (shape[0], shape[2])))
            elif key.endswith(("mamba.A_log", "mamba.D")):  # one per head, as a column
                sources.append(Source(key, (key,), (*shape, 1)))
            elif key.endswith("mamba.dt_bias"):
                sources.append(Source(key.replace("dt_bias", "dt_proj.bias"), (key,), shape))
            elif key.endswith("mamba.norm.weight"):  # normalised per group
                groups = int(self.hp["mamba_n_groups"])
                sources.append(Source(key, (key,), (groups, self.inner_size // groups)))
            else:
                sources.append(Source(key, (key,), shape))
        return sources

    def transform(self, key: str, tensor: torch.Tensor) -> torch.Tensor:
        if key.endswith("mamba.A_log"):
            return -tensor.exp().unsqueeze(-1)
        if key.endswith("mamba.D"):
            return tensor.unsqueeze(-1)
        if key.endswith("conv1d.weight"):
            return tensor.squeeze(1)
        if key.endswith("mamba.norm.weight"):
            groups = int(self.hp["mamba_n_groups"])
            return tensor.reshape(groups, -1)
        return super().transform(key, tensor)  # Q and K as Granite's
