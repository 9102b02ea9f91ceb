"""Stream a merged model directory into one GGUF file, one tensor in memory at a time.

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
from typing import TYPE_CHECKING, Any

import gguf
import numpy as np
from gguf import GGMLQuantizationType as Q
from gguf import LlamaFileType as F

from lorapipe.plugin import UserError

from . import kquants
from .families import Family, Source, model_family
from .mix import is_70b, possible_types, tensor_types
from .vocab import GgufVocab, read_vocab

if TYPE_CHECKING:
    import torch

# GGUF type name (as users write it, llama-quantize's names) → (main tensor type, file type).
# The K types are llama-quantize's mixes (see mix.py); the others hold one type.
GGUF_TYPES: dict[str, tuple[Q, F]] = {
    "f32": (Q.F32, F.ALL_F32),
    "f16": (Q.F16, F.MOSTLY_F16),
    "bf16": (Q.BF16, F.MOSTLY_BF16),
    "q8_0": (Q.Q8_0, F.MOSTLY_Q8_0),
    "q4_0": (Q.Q4_0, F.MOSTLY_Q4_0),
    "q4_k_m": (Q.Q4_K, F.MOSTLY_Q4_K_M),
    "q4_k_s": (Q.Q4_K, F.MOSTLY_Q4_K_S),
    "q5_k_m": (Q.Q5_K, F.MOSTLY_Q5_K_M),
    "q6_k": (Q.Q6_K, F.MOSTLY_Q6_K),
}


def can_produce(type_name: str) -> bool:
    """Whether every tensor type a ``type_name`` file may hold can be encoded here.

    The K-quants are ours (kquants); the rest come from the installed gguf package.
    """
    wanted, file_type = GGUF_TYPES[type_name]
    for qtype in possible_types(wanted, file_type):
        block = gguf.GGML_QUANT_SIZES[qtype][0]
        try:
            _quantize(np.zeros((1, block), dtype=np.float32), qtype)
        except NotImplementedError:
            return False
    return True


@dataclass
class _Planned:
    gguf_name: str
    source: Source | None  # None for a generated tensor
    files: tuple[Path, ...]  # the file of each of source.keys
    shape: tuple[int, ...]
    qtype: Q
    data: np.ndarray | None = None  # generated tensors only (tiny)
    fallback: bool = False  # its rows do not fit the wanted type's blocks
    stored: tuple[str, ...] = ()  # each of source.keys as the checkpoint names it


@dataclass
class GgufResult:
    path: Path
    type: str
    tensors: int
    bytes: int
    fallbacks: dict[str, str] = field(default_factory=dict)


def check_model(model_dir: Path) -> tuple[Family, GgufVocab]:
    """Everything that can make an export fail, checked before any tensor is converted."""
    family = model_family(model_dir)
    return family, read_vocab(model_dir, family)


def _safetensors_files(model_dir: Path) -> list[Path]:
    files = sorted(model_dir.glob("*.safetensors"))
    if not files:
        raise UserError(
            f"{model_dir}: no *.safetensors weights; the GGUF exporter reads safetensors only"
        )
    return files


def _nbytes(shape: tuple[int, ...], qtype: Q) -> int:
    if qtype == Q.F32:
        return prod(shape) * 4
    if qtype in (Q.F16, Q.BF16):
        return prod(shape) * 2
    return prod(gguf.quant_shape_to_byte_shape(shape, qtype))


def _plan(model_dir: Path, family: Family, n_vocab: int, wanted: Q,
          file_type: F) -> list[_Planned]:
    """Every tensor of the file, named, shaped and typed, from the headers only."""
    from safetensors import safe_open

    names = gguf.get_tensor_name_map(family.arch, family.n_layers)
    plan = [_Planned(name, None, (), data.shape, Q.F32, data)
            for name, data in family.extra_tensors().items()]
    where: dict[str, Path] = {}
    stored: dict[str, str] = {}  # the text model's name → the checkpoint's (packaged)
    shapes: dict[str, tuple[int, ...]] = {}
    for file in _safetensors_files(model_dir):
        with safe_open(file, framework="pt") as handle:
            for key in handle.keys():  # noqa: SIM118 - safe_open is not a mapping
                name = family.packaged(key) if family.packaged else key
                if name is not None and not family.skip(name):
                    where[name], stored[name] = file, key
                    shapes[name] = tuple(handle.get_slice(key).get_shape())
    for source in family.sources(shapes):
        gguf_name = names.get_name(source.name, try_suffixes=(".weight", ".bias", ".scale"))
        key = source.keys[0]
        if gguf_name is None:
            raise UserError(
                f"{where[key]}: tensor {key!r} has no llama.cpp counterpart in the "
                f"{family.arch.name.lower()} architecture; the GGUF exporter cannot place it"
            )
        shape = source.shape
        if gguf_name.startswith("token_embd.") and shape[0] > n_vocab:
            shape = (n_vocab, *shape[1:])  # rows beyond the vocabulary are dropped
        files = tuple(where[k] for k in source.keys)
        plan.append(_Planned(gguf_name, source, files, shape, Q.F32,
                             stored=tuple(stored[k] for k in source.keys)))
    types = tensor_types([(item.gguf_name, item.shape) for item in plan], wanted, file_type,
                         family.n_layers,
                         is_70b(family.arch, family.n_layers, family.n_head, family.n_head_kv),
                         family.n_experts)
    for item, (qtype, fallback) in zip(plan, types, strict=True):
        item.qtype, item.fallback = qtype, fallback
    return plan


def _tensors(plan: list[_Planned], family: Family) -> Iterator[tuple[_Planned, np.ndarray]]:
    """Yield each planned tensor converted, reading only its own sources from disk.

    A file stays open (mapped) from its first tensor to its last one only, so the pages
    of a shard already written are let go.
    """
    import torch
    from safetensors import safe_open

    last_use = {file: i for i, item in enumerate(plan) for file in item.files}
    handles: dict[Path, Any] = {}

    def read(file: Path, key: str) -> torch.Tensor:
        if file not in handles:
            handles[file] = safe_open(file, framework="pt").__enter__()
        return handles[file].get_tensor(key).float()

    try:
        for i, item in enumerate(plan):
            source = item.source
            if source is None:
                yield item, item.data
                continue
            read_in = [read(file, key) for file, key in zip(item.files, item.stored,
                                                            strict=True)]
            tensor = read_in[0] if len(read_in) == 1 else torch.stack(read_in)
            if source.rows is not None:
                tensor = tensor[..., source.rows, :]
            tensor = family.transform(source.name, tensor)
            if tuple(tensor.shape) != item.shape:
                tensor = tensor[: item.shape[0]]  # embedding rows beyond the vocabulary
            for file in set(item.files):
                if last_use[file] == i:
                    handles.pop(file).__exit__(None, None, None)
            yield item, _convert(tensor, item.qtype)
    finally:
        for handle in handles.values():
            handle.__exit__(None, None, None)


def _convert(tensor: torch.Tensor, qtype: Q) -> np.ndarray:
    """A float32 torch tensor as ``qtype`` bytes."""
    if qtype == Q.F16:
        # torch rounds to f16 as numpy does (to nearest even), several times faster
        return tensor.half().contiguous().numpy()
    array = np.ascontiguousarray(tensor.numpy(), dtype=np.float32)
    return array if qtype == Q.F32 else _quantize(array, qtype)


def _quantize(array: np.ndarray, qtype: Q) -> np.ndarray:
    if qtype in kquants.TYPES:
        return kquants.quantize(array, qtype)
    return gguf.quants.quantize(array, qtype)


def _write_metadata(writer: gguf.GGUFWriter, family: Family, vocab: GgufVocab,
                    file_type: F, quantized: bool, provenance: dict[str, Any]) -> None:
    writer.add_type(gguf.GGUFType.MODEL)
    if provenance.get("name"):
        writer.add_name(str(provenance["name"]))
    if provenance.get("base_model"):
        writer.add_base_model_count(1)
        writer.add_base_model_name(0, str(provenance["base_model"]))
    for key, value in provenance.get("lorapipe", {}).items():
        _add_custom(writer, f"lorapipe.{key}", value)
    family.metadata(writer)
    writer.add_file_type(file_type)
    if quantized:
        writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
    vocab.write(writer)


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
    """Convert the model in ``model_dir`` to ``out_path`` (written atomically).

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
    family, vocab = check_model(model_dir)
    wanted, file_type = GGUF_TYPES[type_name]
    n_vocab = len(vocab.tokens)
    plan = _plan(model_dir, family, n_vocab, wanted, file_type)

    with atomic_gguf(out_path, family.arch) as writer:
        _write_metadata(writer, family, vocab, file_type, wanted not in (Q.F32, Q.F16, Q.BF16),
                        provenance or {})
        for item in plan:
            writer.add_tensor_info(item.gguf_name, item.shape, np.dtype(np.float32),
                                   _nbytes(item.shape, item.qtype), raw_dtype=item.qtype)
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_ti_data_to_file()
        bar = tqdm(_tensors(plan, family), total=len(plan), desc=f"gguf {type_name}",
                   unit="tensor", disable=not progress)
        for _item, data in bar:
            writer.write_tensor_data(data)
    fallbacks = {item.gguf_name: item.qtype.name.lower() for item in plan if item.fallback}
    return GgufResult(out_path, type_name, len(plan), out_path.stat().st_size, fallbacks)


@contextlib.contextmanager
def atomic_gguf(out_path: Path, arch: gguf.MODEL_ARCH) -> Iterator[gguf.GGUFWriter]:
    """A writer on a temporary file beside ``out_path``, synced and renamed into place
    when the body has written it, removed when the body fails: a GGUF that exists is whole."""
    out_path.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_path.with_name(f".{out_path.name}.{os.getpid()}.tmp")
    writer = gguf.GGUFWriter(tmp, gguf.MODEL_ARCH_NAMES[arch])
    try:
        yield writer
        writer.flush()
        os.fsync(writer.fout[0].fileno())
        writer.close()
        os.replace(tmp, out_path)
    except BaseException:
        writer.close()
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise


def gguf_version() -> str:
    from importlib.metadata import version

    return version("gguf")
