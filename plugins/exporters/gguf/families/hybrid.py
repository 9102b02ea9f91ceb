"""Families whose layers are not all attention: LFM2's gated short-convolution layers
between attention layers. llama.cpp tells the two kinds apart by a per-layer KV head
count of 0 for a convolution layer, and runs the convolution from a 2-D kernel.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import gguf

from .base import Family, Source

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
