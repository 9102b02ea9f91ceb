"""The tensor type of each weight in a GGUF file type, chosen as llama.cpp chooses it.

The K-quant file types are mixes: llama-quantize (``llama_tensor_get_type`` in
src/llama-quant.cpp) gives the output layer Q6_K, some attn_v and ffn_down layers more
bits (all attn_v more in a "70B"), and a weight whose rows do not divide into 256-value
blocks a 32-value type (``tensor_type_fallback``; per tensor: llama.cpp has no model-wide
fallback). A file of ours should carry the same types as llama-quantize's file of the
same name, so users get the sizes and quality they know from llama.cpp. This ports that
choice for the file types we write, MoE cases included (an expert stack's ffn_down takes
its layer from its name; 8-expert models get more bits in attention); the Falcon cases are
left out because we do not export Falcon.

The other types are written "pure", as llama.cpp's converter writes them: every 2-D or 3-D
weight in the type, F16 where its rows do not divide into the type's blocks. Either way
biases, norms, the MoE routers (``ffn_gate_inp``) and the convolution kernels (LFM2's,
Mamba's) stay F32: the converter writes them so (llama.cpp's convolution reads F32 only),
and llama-quantize never quantizes them.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

import gguf
from gguf import GGMLQuantizationType as Q
from gguf import LlamaFileType as F

K_MIXES = (F.MOSTLY_Q4_K_M, F.MOSTLY_Q4_K_S, F.MOSTLY_Q5_K_M, F.MOSTLY_Q6_K)

# tensor_type_fallback: a 256-block type becomes this 32-block type (F16 if that fails too)
_SHAPE_FALLBACK = {Q.Q4_K: Q.Q5_0, Q.Q5_K: Q.Q5_1, Q.Q6_K: Q.Q8_0}
# weights the converter always writes in F32 (and llama-quantize then leaves alone): the
# routers, the convolution kernels, and every norm (Mamba 2's grouped one is 2-D)
_ALWAYS_F32 = ("ffn_gate_inp.weight", "ffn_gate_inp_shexp.weight", "shortconv.conv.weight",
               "ssm_conv1d.weight", "_norm.weight")


def possible_types(default: Q, file_type: F) -> set[Q]:
    """Every quantized type a file of this type may hold (to check they can be produced)."""
    if file_type not in K_MIXES:
        return {default, Q.Q6_K, Q.Q8_0} if default == Q.Q4_0 else {default}
    types = {default, Q.Q5_K, Q.Q6_K, Q.Q8_0}
    return types | {_SHAPE_FALLBACK[t] for t in types if t in _SHAPE_FALLBACK}


def is_70b(arch: gguf.MODEL_ARCH, n_layers: int, n_head: int, n_head_kv: int) -> bool:
    """Whether llama.cpp counts the model as a 70B (``LLM_TYPE_70B``, from the layer count
    per architecture), whose attn_v weights get Q5_K where others get Q4_K."""
    if n_layers != 80:
        return False
    return arch == gguf.MODEL_ARCH.QWEN2 or (arch == gguf.MODEL_ARCH.LLAMA and n_head != n_head_kv)


def tensor_types(tensors: Sequence[tuple[str, tuple[int, ...]]], default: Q, file_type: F,
                 n_layers: int, seventy_b: bool = False, n_experts: int = 0,
                 ) -> list[tuple[Q, bool]]:
    """For each (GGUF name, numpy shape): its type, and whether its shape forced a fallback."""
    names = [name for name, _shape in tensors]
    tied = "output.weight" not in names
    if file_type not in K_MIXES:
        return [_output(shape, default) if _is_output(name, tied) and default in (Q.Q4_0, Q.Q8_0)
                else _pure(name, shape, default) for name, shape in tensors]
    n_attn_v = sum(_is_attn_v(name) for name in names)
    counters = {"attn_v": 0, "ffn_down": 0}
    chosen: dict[str, tuple[Q, bool]] = {}
    # llama.cpp walks the weights by layer, then name; the counters follow that order
    for name, shape in sorted(tensors, key=lambda item: (_layer(item[0]), item[0])):
        if len(shape) < 2 or _always_f32(name):
            chosen[name] = (Q.F32, False)
        elif not _quantizable(name):
            chosen[name] = (Q.F16, False)
        else:
            wanted = _mix_type(name, shape[-1], default, file_type, tied, n_attn_v, n_layers,
                               counters, n_experts)
            if seventy_b and _is_attn_v(name) and wanted == Q.Q4_K:
                wanted = Q.Q5_K
            chosen[name] = _fit(wanted, shape[-1], _SHAPE_FALLBACK.get(wanted, wanted))
    return [chosen[name] for name in names]


# llama.cpp's token embedding category: Gemma 4's per-layer table counts as one
_TOKEN_EMBEDDINGS = ("token_embd.weight", "per_layer_token_embd.weight")


def _is_output(name: str, tied: bool) -> bool:
    return name == "output.weight" or (tied and name in _TOKEN_EMBEDDINGS)


def _output(shape: tuple[int, ...], default: Q) -> tuple[Q, bool]:
    """llama-quantize's output layer (or tied embeddings) in a quantized single-type file:
    Q6_K (Q8_0 where the rows do not fit its blocks), and a Q8_0 file keeps Q8_0."""
    if default == Q.Q8_0 or shape[-1] % gguf.GGML_QUANT_SIZES[default][0]:
        return _fit(Q.Q8_0, shape[-1], Q.F16)
    return _fit(Q.Q6_K, shape[-1], Q.Q8_0)


def _pure(name: str, shape: tuple[int, ...], wanted: Q) -> tuple[Q, bool]:
    if len(shape) < 2 or _always_f32(name):
        return Q.F32, False  # norms and biases: tiny, and llama.cpp keeps them in F32
    if wanted not in (Q.F32, Q.F16, Q.BF16) and not _quantizable(name):
        return Q.F16, False  # llama-quantize leaves it as the converter writes it
    return _fit(wanted, shape[-1], Q.F16)


def _fit(wanted: Q, n_cols: int, fallback: Q) -> tuple[Q, bool]:
    """``wanted`` if rows divide into its blocks, else ``fallback`` (F16 if that fails too)."""
    if n_cols % gguf.GGML_QUANT_SIZES[wanted][0] == 0:
        return wanted, False
    if n_cols % gguf.GGML_QUANT_SIZES[fallback][0] == 0:
        return fallback, True
    return Q.F16, True


def _layer(name: str) -> int:
    match = re.match(r"blk\.(\d+)\.", name)
    return int(match.group(1)) if match else -1


def _always_f32(name: str) -> bool:
    """The converter's F32-only tensors: those listed, and all but weights (biases, even
    gpt-oss's 2-D expert biases)."""
    return name.endswith(_ALWAYS_F32) or not name.endswith(".weight")


def _quantizable(name: str) -> bool:
    """llama.cpp's ``tensor_allows_quantization`` for the tensors our architectures have."""
    return (name.endswith("weight") and "_norm.weight" not in name
            and "per_layer_model_proj" not in name)


def _is_attn_v(name: str) -> bool:
    return any(part in name for part in ("attn_qkv.weight", "attn_kv_b.weight", "attn_v.weight"))


def _use_more_bits(i_layer: int, n_layers: int) -> bool:
    return (i_layer < n_layers // 8 or i_layer >= 7 * n_layers // 8
            or (i_layer - n_layers // 8) % 3 == 2)


def _mix_type(name: str, n_cols: int, default: Q, file_type: F, tied: bool, n_attn_v: int,
              n_layers: int, counters: dict[str, int], n_experts: int) -> Q:
    """``llama_tensor_get_type_impl`` for the K mixes, without its Falcon/70B cases."""
    if _is_output(name, tied):
        if n_cols % gguf.GGML_QUANT_SIZES[default][0]:
            return Q.Q8_0
        return Q.Q6_K
    if name in _TOKEN_EMBEDDINGS:
        return default
    if _is_attn_v(name):
        i_layer = counters["attn_v"]
        counters["attn_v"] += 1
        if n_experts == 8:
            return Q.Q8_0  # whatever the mix ("trades just ~128MB")
        if file_type in (F.MOSTLY_Q4_K_M, F.MOSTLY_Q5_K_M) and _use_more_bits(i_layer, n_attn_v):
            return Q.Q6_K
        if file_type == F.MOSTLY_Q4_K_S and i_layer < 4:
            return Q.Q5_K
        return default
    if "attn_k.weight" in name and n_experts == 8:
        return Q.Q8_0
    if ("attn_output.weight" in name and n_experts == 8
            and file_type in (F.MOSTLY_Q4_K_S, F.MOSTLY_Q4_K_M)):
        return Q.Q5_K
    if "ffn_down" in name:
        i_layer = counters["ffn_down"]
        counters["ffn_down"] += 1
        if n_experts > 1:  # experts may sit in any order: the layer is read from the name
            i_layer = _layer(name)
        if file_type in (F.MOSTLY_Q4_K_M, F.MOSTLY_Q5_K_M) and _use_more_bits(i_layer, n_layers):
            return Q.Q6_K
        if file_type == F.MOSTLY_Q4_K_S and i_layer < n_layers // 8:
            return Q.Q5_K
    return default
