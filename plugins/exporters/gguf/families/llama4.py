"""Llama 4 (``llama4_text``) as llama.cpp's converter writes it (``Llama4Model``): Llama's
metadata without its Q/K permutation (transformers' Llama 4 already rotates interleaved
pairs, as llama.cpp does), the dense layers' ``intermediate_size_mlp`` as the feed-forward
length and ``intermediate_size`` as the experts' (and shared expert's), and the experts
as transformers stores them: ``experts.gate_up_proj`` (experts, hidden, 2·intermediate;
gate columns first) and ``experts.down_proj`` (experts, intermediate, hidden), input-major.

llama.cpp's graph fixes what the config spells out: RoPE skipped (NoPE) and full attention
on every 4th layer, chunked attention in 8192-token chunks on the others, temperature
tuning of the NoPE layers' queries (floor 8192, scale 0.1), and the RoPE layers' Q/K
L2 norm on every model but the 128-expert one. Only the MoE interleave step is read.
A checkpoint that says otherwise would run as another model there (or, with fewer than
4 layers or attention biases, not at all), so it is refused.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

import gguf

from lorapipe.plugin import UserError

from .base import CONVERT, Source
from .llama import Llama

if TYPE_CHECKING:
    import torch

_GATE_UP = "experts.gate_up_proj"
_DOWN = "experts.down_proj"
# the values llama.cpp's graph uses whatever the file says (llama4's load_arch_hparams);
# it has no attention output bias either, and refuses to load a file with one
_FIXED = {"attention_chunk_size": 8192, "attn_temperature_tuning": True, "floor_scale": 8192,
          "attn_scale": 0.1, "attention_bias": False}


class Llama4(Llama):
    model_types = ("llama4_text",)
    arch = gguf.MODEL_ARCH.LLAMA4
    rope_types = ("default", "llama3")
    reads_add_prefix_space = False  # its converter takes the GPT-2 BPE vocabulary as is

    def __init__(self, hp: dict[str, Any], where: Path) -> None:
        # the converter's own swap: the dense layers' size is the feed-forward length
        super().__init__({**hp, "intermediate_size": hp["intermediate_size_mlp"],
                          "intermediate_size_moe": hp["intermediate_size"]}, where)
        n = self.n_layers
        expected = [int((i + 1) % 4 != 0) for i in range(n)]
        got = [int(v) for v in (hp.get("no_rope_layers") or [])[:n]]
        if got != expected:
            self._refuse(f"no_rope_layers {got} differ from the NoPE layers llama.cpp uses "
                         f"for this architecture (every 4th: {expected})")
        if n < 4:
            self._refuse(f"num_hidden_layers {n}: llama.cpp's graph attends in chunks on all "
                         "but every 4th layer and aborts without such a full-attention layer")
        chunked = ["chunked_attention" if rope else "full_attention" for rope in expected]
        if hp.get("layer_types") != chunked:
            self._refuse(f"layer_types {hp.get('layer_types')} differ from the attention "
                         f"llama.cpp uses for this architecture ({chunked})")
        changed = {k: hp.get(k) for k, v in _FIXED.items() if hp.get(k) != v}
        if changed:
            self._refuse(f"{changed}: llama.cpp's graph fixes {_FIXED}")
        qk_norm = self.n_experts != 128  # llama.cpp: on all but the 128-expert model type
        if bool(hp.get("use_qk_norm")) != qk_norm:
            self._refuse(f"use_qk_norm {hp.get('use_qk_norm')} with {self.n_experts} "
                         f"experts: llama.cpp's graph uses {qk_norm} for that expert count")
        step = int(hp["interleave_moe_layer_step"])  # llama.cpp: 0 for no expert layer
        if hp.get("moe_layers") != (list(range(step - 1, n, step)) if step > 0 else []):
            self._refuse(f"moe_layers {hp.get('moe_layers')}: llama.cpp puts experts on "
                         f"every interleave_moe_layer_step ({step}) layer")

    def _refuse(self, why: str) -> NoReturn:
        raise UserError(f"{self.where}: Llama 4 {why}; llama.cpp would not run it as "
                        f"transformers does. Convert with llama.cpp: {CONVERT}")

    @property
    def n_experts(self) -> int:
        return int(self.hp["num_local_experts"])

    def metadata(self, writer: gguf.GGUFWriter) -> None:
        super().metadata(writer)
        hp = self.hp
        self.expert_counts(writer)
        writer.add_interleave_moe_layer_step(int(hp["interleave_moe_layer_step"]))
        writer.add_expert_feed_forward_length(int(hp["intermediate_size_moe"]))

    def sources(self, shapes: dict[str, tuple[int, ...]]) -> list[Source]:
        sources = []
        for key, shape in shapes.items():
            if key.endswith(_GATE_UP):  # (experts, hidden, 2·intermediate)
                experts, hidden, columns = shape
                base, half = key.removesuffix("gate_up_proj"), (experts, columns // 2, hidden)
                sources += [Source(base + "gate_proj.weight", (key,), half),
                            Source(base + "up_proj.weight", (key,), half)]
            elif key.endswith(_DOWN):  # (experts, intermediate, hidden)
                sources.append(Source(key + ".weight", (key,), (shape[0], shape[2], shape[1])))
            else:
                sources.append(Source(key, (key,), shape))
        return sources

    def transform(self, key: str, tensor: torch.Tensor) -> torch.Tensor:
        half = tensor.shape[-1] // 2
        if key.endswith(".experts.gate_proj.weight"):
            return tensor[..., :half].transpose(-1, -2)
        if key.endswith(".experts.up_proj.weight"):
            return tensor[..., half:].transpose(-1, -2)
        if key.endswith(".experts.down_proj.weight"):
            return tensor.transpose(-1, -2)
        return tensor  # Q and K as they are: no permutation
