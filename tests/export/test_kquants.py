"""Quantized GGUF files (q4_k_m, q4_k_s, q5_k_m, q6_k, q4_0, q8_0), judged by llama.cpp.

llama-quantize (``llama_cpp.llama_model_quantize``) turns our f16 file of a model into
each mix; our writer makes the same mix from the same merged model. Both files must give
every tensor the same type and the same bytes. llama.cpp quantizes from the f16 file, so
the models here hold f16-representable weights (saved as f32): both sides then start from
identical values, and any byte that differs is a difference in the encoders.
"""

from __future__ import annotations

import ctypes
import json
import shutil
from pathlib import Path

import gguf
import llama_cpp  # dev extra; these tests must not skip silently
import numpy as np
import pytest
import torch
from gguf import GGMLQuantizationType as Q
from gguf import GGUFReader
from llama_cpp_material import compare_tensors, cpp_logits, llama_quantize
from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

from lorapipe.model.source import resolve_model_path
from lorapipe.plugins.exporters.gguf import kquants
from lorapipe.plugins.exporters.gguf.exporter import GgufOptions
from lorapipe.plugins.exporters.gguf.writer import write_gguf

FTYPES = {
    "q4_k_m": llama_cpp.LLAMA_FTYPE_MOSTLY_Q4_K_M,
    "q4_k_s": llama_cpp.LLAMA_FTYPE_MOSTLY_Q4_K_S,
    "q5_k_m": llama_cpp.LLAMA_FTYPE_MOSTLY_Q5_K_M,
    "q6_k": llama_cpp.LLAMA_FTYPE_MOSTLY_Q6_K,
    # single-type files, but llama-quantize still gives the output layer Q6_K in q4_0
    "q4_0": llama_cpp.LLAMA_FTYPE_MOSTLY_Q4_0,
    "q8_0": llama_cpp.LLAMA_FTYPE_MOSTLY_Q8_0,
}
HELD_OUT = (
    "The committee met on Tuesday to review the budget. After a long discussion about "
    "roads, schools and the new library, they agreed to postpone the vote until March, "
    "when the auditors' report would be ready. Numbers: 17, 42, 2024; café, naïve."
)


def _build(out: Path, *, hidden: int, intermediate: int, layers: int, tied: bool) -> Path:
    """A random Llama with the tiny-llama tokenizer, its weights rounded to f16 values."""
    tiny = Path(resolve_model_path("tiny-llama"))
    base = json.loads((tiny / "config.json").read_text())
    config = LlamaConfig(
        vocab_size=base["vocab_size"], hidden_size=hidden, intermediate_size=intermediate,
        num_hidden_layers=layers, num_attention_heads=4, num_key_value_heads=2,
        head_dim=hidden // 4, tie_word_embeddings=tied, bos_token_id=base["bos_token_id"],
        eos_token_id=base["eos_token_id"], pad_token_id=base["pad_token_id"],
    )
    torch.manual_seed(0)
    model = LlamaForCausalLM(config)
    with torch.no_grad():
        # 4x the init's spread: confident (wrong) logits, so quantization moves the
        # perplexity a lot (f16 ~9e7, q4_k_m ~1.5e8) and a file with other weights shows
        for param in model.parameters():
            param.copy_((param * 4).half().float())
    model.save_pretrained(out)
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(tiny / name, out / name)
    return out


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("kq-models")
    return {
        # every row a multiple of 256; 8 layers so use_more_bits picks layers 0, 3, 6, 7
        "wide": _build(root / "wide", hidden=256, intermediate=512, layers=8, tied=False),
        # rows of 128 do not fit 256-value blocks: llama.cpp's per-tensor fallbacks, and
        # tied embeddings (token_embd takes the output layer's type)
        "narrow": _build(root / "narrow", hidden=128, intermediate=256, layers=2, tied=True),
        # 80 layers with grouped KV heads: llama.cpp's "70B", whose attn_v get more bits
        # (Q5_K for Q4_K, so Q5_1 for Q5_0 at these rows of 64)
        "70b": _build(root / "70b", hidden=64, intermediate=64, layers=80, tied=False),
    }


# (model, type) pairs compared; the 70B rule only touches the K mixes' attn_v, so one is enough
CASES = [(model, t) for model in ("wide", "narrow") for t in FTYPES] + [("70b", "q4_k_m")]


@pytest.fixture(scope="module")
def pairs(models: dict[str, Path], tmp_path_factory: pytest.TempPathFactory):
    """(ours, llama.cpp's) file per (model, type)."""
    out = tmp_path_factory.mktemp("kq-gguf")
    f16 = {name: write_gguf(path, out / f"{name}-f16.gguf", "f16", progress=False).path
           for name, path in models.items()}
    files = {}
    for model_name, type_name in CASES:
        ours = write_gguf(models[model_name], out / f"{model_name}-{type_name}.gguf", type_name,
                          progress=False)
        theirs = llama_quantize(f16[model_name], out / f"{model_name}-{type_name}-cpp.gguf",
                                FTYPES[type_name])
        files[model_name, type_name] = (ours, theirs)
    return files


@pytest.mark.parametrize(("model_name", "type_name"), CASES)
def test_same_types_and_bytes_as_llama_quantize(pairs, model_name: str, type_name: str) -> None:
    ours, theirs = pairs[model_name, type_name]
    differ, same, total = compare_tensors(ours.path, theirs)
    assert not differ
    # Every block matches here; the bound leaves room for a llama.cpp build whose compiler
    # fuses multiply-adds (ours is plain float32, like the SSE2 build the tests install).
    assert same / total >= 0.999, f"{same}/{total} blocks identical"
    reader = GGUFReader(ours.path)
    file_type = reader.fields["general.file_type"]
    assert int(file_type.parts[file_type.data[0]][0]) == FTYPES[type_name]


def test_mix_types(pairs) -> None:
    """The choices llama-quantize makes, spelled out, so a change in either side shows."""
    types = {t.name: t.tensor_type for t in GGUFReader(pairs["wide", "q4_k_m"][0].path).tensors}
    assert types["output.weight"] == Q.Q6_K and types["token_embd.weight"] == Q.Q4_K
    assert [types[f"blk.{i}.attn_v.weight"] for i in range(8)] == \
        [Q.Q6_K, Q.Q4_K, Q.Q4_K, Q.Q6_K, Q.Q4_K, Q.Q4_K, Q.Q6_K, Q.Q6_K]
    assert types["blk.3.ffn_down.weight"] == Q.Q6_K and types["blk.1.ffn_down.weight"] == Q.Q4_K
    assert types["blk.0.attn_norm.weight"] == Q.F32
    small = {t.name: t.tensor_type
             for t in GGUFReader(pairs["wide", "q4_k_s"][0].path).tensors}
    assert [small[f"blk.{i}.attn_v.weight"] for i in range(8)] == [Q.Q5_K] * 4 + [Q.Q4_K] * 4
    result = pairs["narrow", "q4_k_m"][0]
    narrow = {t.name: t.tensor_type for t in GGUFReader(result.path).tensors}
    assert narrow["token_embd.weight"] == Q.Q8_0  # tied: the output layer's type, rows of 128
    assert narrow["blk.0.attn_q.weight"] == Q.Q5_0 and narrow["blk.1.ffn_down.weight"] == Q.Q6_K
    assert result.fallbacks["blk.0.attn_q.weight"] == "q5_0"
    assert "blk.1.ffn_down.weight" not in result.fallbacks
    deep = {t.name: t.tensor_type for t in GGUFReader(pairs["70b", "q4_k_m"][0].path).tensors}
    assert deep["blk.10.attn_v.weight"] == Q.Q5_1 and deep["blk.10.attn_q.weight"] == Q.Q5_0


def _perplexity(path: Path, ids: list[int]) -> float:
    logits = cpp_logits(path, ids).astype(np.float64)
    logits -= logits.max(axis=1, keepdims=True)
    log_probs = logits - np.log(np.exp(logits).sum(axis=1, keepdims=True))
    nll = -log_probs[np.arange(len(ids) - 1), ids[1:]]
    return float(np.exp(nll.mean()))


def test_llama_cpp_runs_our_file_like_its_own(pairs, models: dict[str, Path]) -> None:
    ours, theirs = pairs["wide", "q4_k_m"]
    ids = AutoTokenizer.from_pretrained(models["wide"])(HELD_OUT)["input_ids"]
    mine, reference = _perplexity(ours.path, ids), _perplexity(theirs, ids)
    assert abs(mine / reference - 1) < 0.005, (mine, reference)


# relative RMS error on Gaussian weights: 0.071, 0.036, 0.018 (each bit halves it)
@pytest.mark.parametrize(("qtype", "bound"), [(Q.Q4_K, 0.08), (Q.Q5_K, 0.04), (Q.Q6_K, 0.02)])
def test_encoders_round_trip(qtype: Q, bound: float) -> None:
    rng = np.random.default_rng(0)
    weights = rng.standard_normal((48, 512)).astype(np.float32) * 0.02
    encoded = kquants.quantize(weights, qtype)
    assert encoded.dtype == np.uint8
    assert encoded.shape == gguf.quant_shape_to_byte_shape(weights.shape, qtype)
    decoded = gguf.quants.dequantize(encoded, qtype)
    error = np.sqrt(np.mean((decoded - weights) ** 2)) / np.sqrt(np.mean(weights ** 2))
    assert error < bound
    zeros = np.zeros((2, 256), np.float32)
    assert (gguf.quants.dequantize(kquants.quantize(zeros, qtype), qtype) == 0).all()


def test_k_mixes_are_exporter_options() -> None:
    assert GgufOptions(types=list(FTYPES)).types == list(FTYPES)


def _ggml_quantize(rows: np.ndarray, qtype: Q) -> np.ndarray:
    """ggml's own encoder (``ggml_quantize_chunk``, no importance matrix: the reference
    path llama-quantize takes), from the library llama-cpp-python ships."""
    from llama_cpp._ctypes_extensions import load_shared_library

    lib = load_shared_library("ggml-base", Path(llama_cpp.__file__).parent / "lib")
    lib.ggml_quantize_chunk.restype = ctypes.c_size_t
    lib.ggml_quantize_chunk.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p,
                                        ctypes.c_int64, ctypes.c_int64, ctypes.c_int64,
                                        ctypes.c_void_p]
    rows = np.ascontiguousarray(rows, dtype=np.float32)
    out = np.zeros(gguf.quant_shape_to_byte_shape(rows.shape, qtype), dtype=np.uint8)
    lib.ggml_quantize_chunk(int(qtype), rows.ctypes.data, out.ctypes.data, 0, rows.shape[0],
                            rows.shape[1], None)
    return out


@pytest.mark.parametrize("qtype", sorted(kquants.TYPES))
def test_encoders_match_ggml_where_weights_are_odd(qtype: Q) -> None:
    """Corners a trained model rarely reaches: the encoders' zero, flat, all-positive and
    tiny groups, heavy tails, exact ties in the rounding."""
    rng = np.random.default_rng(1)
    cases = {
        "zeros": np.zeros((2, 256)),
        "constant": np.full((2, 256), 0.5),
        "negative constant": np.full((2, 256), -0.5),
        "positive": np.abs(rng.standard_normal((4, 512))),
        "negative": -np.abs(rng.standard_normal((4, 512))),
        "tiny": rng.standard_normal((4, 512)) * 1e-7,
        "heavy tails": rng.standard_t(2, (8, 512)) * 0.01,
        "sparse": rng.standard_normal((8, 512)) * (rng.random((8, 512)) < 0.05),
        "integers": rng.integers(-3, 4, (8, 512)),
    }
    for name, rows in cases.items():
        rows = rows.astype(np.float32)
        assert (kquants.quantize(rows, qtype) == _ggml_quantize(rows, qtype)).all(), name
