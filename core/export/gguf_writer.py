"""Stream a merged Llama directory into one GGUF file, one tensor in memory at a time.

gguf-py's ``GGUFWriter`` normally holds every tensor until ``write_tensors_to_file``;
instead the whole tensor table is declared up front from the safetensors headers (shapes
and the byte size each will have once converted), and each tensor is then read lazily
with ``safe_open``, converted and written before the next is touched. Memory therefore
stays near the largest single tensor, whatever the model size.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from math import prod
from pathlib import Path
from typing import Any

import gguf
import numpy as np
from gguf import GGMLQuantizationType as Q
from gguf import LlamaFileType as F

from lorapipe.errors import UserError
from lorapipe.export.gguf_model import LlamaParams, llama_params, permute_qk
from lorapipe.export.gguf_vocab import GgufVocab, read_vocab

# GGUF type name (as users write it) → (tensor type of 2-D weights, file type).
GGUF_TYPES: dict[str, tuple[Q, F]] = {
    "f32": (Q.F32, F.ALL_F32),
    "f16": (Q.F16, F.MOSTLY_F16),
    "bf16": (Q.BF16, F.MOSTLY_BF16),
    "q8_0": (Q.Q8_0, F.MOSTLY_Q8_0),
    "q4_0": (Q.Q4_0, F.MOSTLY_Q4_0),
    # Every 2-D weight in Q4_K: llama.cpp's "small" Q4_K mix is the closest file type.
    "q4_k": (Q.Q4_K, F.MOSTLY_Q4_K_S),
}

# Fallback for a weight whose rows do not divide into the type's blocks (llama.cpp's
# converter does the same).
_FALLBACK = Q.F16


def can_produce(type_name: str) -> bool:
    """Whether the installed gguf package implements quantization to ``type_name``."""
    qtype = GGUF_TYPES[type_name][0]
    block = gguf.GGML_QUANT_SIZES[qtype][0]
    try:
        gguf.quants.quantize(np.zeros((1, block), dtype=np.float32), qtype)
    except NotImplementedError:
        return False
    return True


@dataclass
class _Planned:
    gguf_name: str
    source: str  # safetensors key, or "" for a generated tensor
    file: Path | None
    shape: tuple[int, ...]
    qtype: Q
    data: np.ndarray | None = None  # generated tensors only (tiny)


@dataclass
class GgufResult:
    path: Path
    type: str
    tensors: int
    bytes: int
    fallbacks: dict[str, str] = field(default_factory=dict)


def check_model(model_dir: Path) -> tuple[LlamaParams, GgufVocab]:
    """Everything that can make an export fail, checked before any tensor is converted."""
    params = llama_params(model_dir)
    vocab = read_vocab(model_dir, params.vocab_size)
    return params, vocab


def _safetensors_files(model_dir: Path) -> list[Path]:
    files = sorted(model_dir.glob("*.safetensors"))
    if not files:
        raise UserError(
            f"{model_dir}: no *.safetensors weights; the GGUF exporter reads safetensors only"
        )
    return files


def _tensor_type(shape: tuple[int, ...], wanted: Q) -> Q:
    if len(shape) < 2:
        return Q.F32  # norms and biases: tiny, and llama.cpp keeps them in F32
    block = gguf.GGML_QUANT_SIZES[wanted][0]
    return wanted if shape[-1] % block == 0 else _FALLBACK


def _nbytes(shape: tuple[int, ...], qtype: Q) -> int:
    if qtype == Q.F32:
        return prod(shape) * 4
    if qtype in (Q.F16, Q.BF16):
        return prod(shape) * 2
    return prod(gguf.quant_shape_to_byte_shape(shape, qtype))


def _plan(model_dir: Path, params: LlamaParams, wanted: Q) -> list[_Planned]:
    """Every tensor of the file, named, shaped and typed, from the headers only."""
    from safetensors import safe_open

    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH.LLAMA, params.n_layers)
    plan: list[_Planned] = []
    factors = params.rope_freq_factors()
    if factors is not None:
        data = np.asarray(factors, dtype=np.float32)
        name = gguf.TENSOR_NAMES[gguf.MODEL_TENSOR.ROPE_FREQS] + ".weight"
        plan.append(_Planned(name, "", None, data.shape, Q.F32, data))
    for file in _safetensors_files(model_dir):
        with safe_open(file, framework="pt") as handle:
            for key in handle.keys():  # noqa: SIM118 - safe_open is not a mapping
                if key.endswith("rotary_emb.inv_freq"):
                    continue  # recomputed by llama.cpp from the RoPE metadata
                gguf_name = names.get_name(key, try_suffixes=(".weight", ".bias"))
                if gguf_name is None:
                    raise UserError(
                        f"{file}: tensor {key!r} has no llama.cpp counterpart in the llama "
                        "architecture; the GGUF exporter cannot place it"
                    )
                shape = tuple(handle.get_slice(key).get_shape())
                plan.append(_Planned(gguf_name, key, file, shape, _tensor_type(shape, wanted)))
    return plan


def _tensors(plan: list[_Planned], params: LlamaParams) -> Iterator[tuple[_Planned, np.ndarray]]:
    """Yield each planned tensor converted, reading one at a time from disk."""
    from safetensors import safe_open

    open_file: Path | None = None
    with contextlib.ExitStack() as stack:
        handle: Any = None
        for item in plan:
            if item.data is not None:
                yield item, item.data
                continue
            if item.file != open_file:
                stack.close()
                handle = stack.enter_context(safe_open(item.file, framework="pt"))
                open_file = item.file
            tensor = handle.get_tensor(item.source).float()
            if item.source.endswith(("q_proj.weight", "q_proj.bias")):
                tensor = permute_qk(tensor, params.n_head)
            elif item.source.endswith(("k_proj.weight", "k_proj.bias")):
                tensor = permute_qk(tensor, params.n_head_kv)
            yield item, _convert(tensor.numpy(), item.qtype)


def _convert(array: np.ndarray, qtype: Q) -> np.ndarray:
    if qtype == Q.F32:
        return np.ascontiguousarray(array, dtype=np.float32)
    if qtype == Q.F16:
        return np.ascontiguousarray(array.astype(np.float16))
    return gguf.quants.quantize(np.ascontiguousarray(array), qtype)


def _write_metadata(writer: gguf.GGUFWriter, params: LlamaParams, vocab: GgufVocab,
                    file_type: F, quantized: bool, provenance: dict[str, Any]) -> None:
    writer.add_type(gguf.GGUFType.MODEL)
    if provenance.get("name"):
        writer.add_name(str(provenance["name"]))
    if provenance.get("base_model"):
        writer.add_base_model_count(1)
        writer.add_base_model_name(0, str(provenance["base_model"]))
    for key, value in provenance.get("lorapipe", {}).items():
        _add_custom(writer, f"lorapipe.{key}", value)
    writer.add_block_count(params.n_layers)
    writer.add_context_length(params.n_ctx)
    writer.add_embedding_length(params.n_embd)
    writer.add_feed_forward_length(params.n_ff)
    writer.add_head_count(params.n_head)
    writer.add_head_count_kv(params.n_head_kv)
    writer.add_key_length(params.head_dim)
    writer.add_value_length(params.head_dim)
    writer.add_rope_dimension_count(params.head_dim)
    writer.add_rope_freq_base(params.rope_theta)
    if params.rope_type == "linear":
        writer.add_rope_scaling_type(gguf.RopeScalingType.LINEAR)
        writer.add_rope_scaling_factor(float(params.rope["factor"]))
    writer.add_layer_norm_rms_eps(params.rms_eps)
    writer.add_vocab_size(params.vocab_size)
    writer.add_file_type(file_type)
    if quantized:
        writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre(vocab.pre)
    writer.add_token_list(vocab.tokens)
    writer.add_token_types(vocab.token_types)
    vocab.special.add_to_gguf(writer, quiet=True)
    if vocab.eot_id is not None:
        writer.add_eot_token_id(vocab.eot_id)


def _add_custom(writer: gguf.GGUFWriter, key: str, value: Any) -> None:
    if isinstance(value, bool):
        writer.add_bool(key, value)
    elif isinstance(value, int):
        writer.add_int64(key, value)
    elif isinstance(value, float):
        writer.add_float64(key, value)
    elif isinstance(value, (list, tuple)):
        writer.add_array(key, [str(v) for v in value])
    elif value is not None:
        writer.add_string(key, str(value))


def write_gguf(model_dir: Path, out_path: Path, type_name: str,
               provenance: dict[str, Any] | None = None, progress: bool = True) -> GgufResult:
    """Convert the Llama model in ``model_dir`` to ``out_path`` (written atomically).

    ``provenance`` may hold ``name``, ``base_model`` and a ``lorapipe`` mapping of extra
    scalar/list values written as ``lorapipe.<key>`` metadata.
    """
    from tqdm import tqdm

    if type_name not in GGUF_TYPES:
        raise UserError(f"unknown GGUF type {type_name!r}; choose from {', '.join(GGUF_TYPES)}")
    if not can_produce(type_name):
        raise UserError(
            f"GGUF type {type_name}: the installed gguf package {gguf_version()} cannot "
            "quantize to it; export f16 and run llama.cpp's llama-quantize instead"
        )
    model_dir, out_path = Path(model_dir), Path(out_path)
    params, vocab = check_model(model_dir)
    wanted, file_type = GGUF_TYPES[type_name]
    plan = _plan(model_dir, params, wanted)

    out_path.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_path.with_name(f".{out_path.name}.{os.getpid()}.tmp")
    writer = gguf.GGUFWriter(tmp, gguf.MODEL_ARCH_NAMES[gguf.MODEL_ARCH.LLAMA])
    try:
        _write_metadata(writer, params, vocab, file_type, wanted not in (Q.F32, Q.F16, Q.BF16),
                        provenance or {})
        for item in plan:
            writer.add_tensor_info(item.gguf_name, item.shape, np.dtype(np.float32),
                                   _nbytes(item.shape, item.qtype), raw_dtype=item.qtype)
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_ti_data_to_file()
        bar = tqdm(_tensors(plan, params), total=len(plan), desc=f"gguf {type_name}",
                   unit="tensor", disable=not progress)
        for _item, data in bar:
            writer.write_tensor_data(data)
        writer.flush()
        os.fsync(writer.fout[0].fileno())
        writer.close()
        os.replace(tmp, out_path)
    except BaseException:
        writer.close()
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise
    fallbacks = {
        item.gguf_name: item.qtype.name.lower()
        for item in plan if len(item.shape) >= 2 and item.qtype != wanted
    }
    return GgufResult(out_path, type_name, len(plan), out_path.stat().st_size, fallbacks)


def gguf_version() -> str:
    from importlib.metadata import version

    return version("gguf")
