"""GGUF export, judged by llama.cpp itself (llama-cpp-python) and gguf-py's reader."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import llama_cpp  # dev extra; .ci/run installs it, and these tests must not skip silently
import numpy as np
import pytest
import torch
from gguf import GGUFReader
from llama_cpp_material import cpp_logits
from pydantic import ValidationError
from safetensors.torch import load_file, save_file
from transformers import AutoModelForCausalLM, AutoTokenizer

from lorapipe.config import validate_config
from lorapipe.context import RunContext
from lorapipe.errors import ConfigError, UserError
from lorapipe.export import run_stage
from lorapipe.manifest import write_manifest
from lorapipe.model.source import resolve_model_path
from lorapipe.plan import build_plan
from lorapipe.plugins.exporters.gguf.exporter import GgufOptions
from lorapipe.plugins.exporters.gguf.families import permute_qk
from lorapipe.plugins.exporters.gguf.writer import write_gguf

TEXTS = [
    "Hello world",
    "The quick brown fox, jumps! over... the lazy dog? (yes) [no] {maybe}",
    "Numbers: 7 42 12345 3.14159 2024-01-15 $19.99 50%",
    "Café naïve Zürich 東京 Москва العربية 🙂 → ✓",
    "  leading spaces\n\nnew lines\tand tabs   ",
    "it's don't we'll THEY'RE",
    "def add(a, b):\n    return a + b\n",
    "<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\nHi!<|eot_id|>"
    "<|start_header_id|>assistant<|end_header_id|>\n\nHello.<|eot_id|><|end_of_text|>",
]
SAMPLE = Path(__file__).resolve().parents[2] / "configs" / "data" / "quickstart.jsonl"
PROMPT = "The weather today is sunny. Question: What is the capital of France? Answer: Paris."


@pytest.fixture(scope="module")
def tiny_dir() -> Path:
    return Path(resolve_model_path("tiny-llama"))


@pytest.fixture(scope="module")
def sharp_dir(tiny_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """tiny-llama changed to make confident predictions.

    The random model's logits are nearly flat (std ~0.2, median top-1 margin ~0.01), so
    q8_0 rounding flips the top-1 token at a few percent of positions whatever the export
    does, and scaling the output layer does not help (the rounding error scales with it).
    Here the output layer is a copy of the input embeddings, doubled, so every position
    has a clear favourite (median margin ~2): top-1 agreement then measures the quantized
    weights rather than the ties. The layers still shift every logit (max |diff| ~0.03).
    """
    out = tmp_path_factory.mktemp("sharp")
    for item in tiny_dir.iterdir():
        shutil.copy(item, out / item.name)
    tensors = load_file(tiny_dir / "model.safetensors")
    tensors["model.embed_tokens.weight"] = tensors["model.embed_tokens.weight"] * 2
    tensors["lm_head.weight"] = tensors["model.embed_tokens.weight"].clone()
    save_file(tensors, out / "model.safetensors", metadata={"format": "pt"})
    return out


@pytest.fixture(scope="module")
def exported(tiny_dir: Path, sharp_dir: Path, tmp_path_factory: pytest.TempPathFactory):
    out = tmp_path_factory.mktemp("gguf")
    files = {t: write_gguf(tiny_dir, out / f"model-{t}.gguf", t, progress=False).path
             for t in ("f32", "f16", "bf16", "q4_0")}
    files["q8_0"] = write_gguf(sharp_dir, out / "sharp-q8_0.gguf", "q8_0", progress=False).path
    return files


def _hf_logits(model_dir: Path, ids: list[int]) -> np.ndarray:
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    with torch.no_grad():
        return model(torch.tensor([ids])).logits[0].numpy()


def test_llama_cpp_tokenizes_like_transformers(tiny_dir: Path, exported) -> None:
    tokenizer = AutoTokenizer.from_pretrained(tiny_dir)
    llm = llama_cpp.Llama(str(exported["f16"]), vocab_only=True, verbose=False)
    try:
        for text in TEXTS:
            expected = tokenizer(text, add_special_tokens=False)["input_ids"]
            assert llm.tokenize(text.encode(), add_bos=False, special=True) == expected, text
        # and BOS is added the way the tokenizer's post-processor adds it
        assert llm.tokenize(b"Hi", add_bos=True) == tokenizer("Hi")["input_ids"]
        ids = tokenizer(TEXTS[3], add_special_tokens=False)["input_ids"]
        assert llm.detokenize(ids).decode() == TEXTS[3]
    finally:
        llm.close()


@pytest.mark.parametrize(("gguf_type", "limit"), [("f32", 1e-3), ("f16", 5e-3)])
def test_llama_cpp_logits_match_transformers(tiny_dir: Path, exported, gguf_type: str,
                                             limit: float) -> None:
    ids = AutoTokenizer.from_pretrained(tiny_dir)(PROMPT)["input_ids"]
    diff = np.abs(cpp_logits(exported[gguf_type], ids) - _hf_logits(tiny_dir, ids)).max()
    assert diff < limit, f"{gguf_type}: max |logit diff| {diff}"


def test_q8_0_top1_agrees_with_transformers(sharp_dir: Path, exported) -> None:
    tokenizer = AutoTokenizer.from_pretrained(sharp_dir)
    ids = tokenizer(" ".join([PROMPT, *TEXTS[:7]]))["input_ids"]
    cpp, hf = cpp_logits(exported["q8_0"], ids), _hf_logits(sharp_dir, ids)
    agreement = (cpp.argmax(-1) == hf.argmax(-1)).mean()
    assert agreement >= 0.99, f"top-1 agreement {agreement:.3f} over {len(ids)} positions"
    assert np.abs(cpp - hf).max() < 0.1


@pytest.mark.parametrize(("gguf_type", "limit"), [("bf16", 0.01), ("q4_0", 0.25)])
def test_other_types_load_and_stay_close(tiny_dir: Path, exported, gguf_type: str,
                                         limit: float) -> None:
    """Lossy types: the RMS logit error, relative to the spread of the logits."""
    ids = AutoTokenizer.from_pretrained(tiny_dir)(PROMPT)["input_ids"]
    hf = _hf_logits(tiny_dir, ids)
    error = np.sqrt(np.mean((cpp_logits(exported[gguf_type], ids) - hf) ** 2))
    assert error / hf.std() < limit, f"relative RMS error {error / hf.std():.4f}"


def _field(reader: GGUFReader, key: str):
    return reader.fields[key].contents()


def test_metadata_and_tensor_layout(tiny_dir: Path, exported) -> None:
    config = json.loads((tiny_dir / "config.json").read_text())
    tokenizer = AutoTokenizer.from_pretrained(tiny_dir)
    reader = GGUFReader(exported["f32"])
    assert _field(reader, "general.architecture") == "llama"
    expected = {
        "llama.context_length": config["max_position_embeddings"],
        "llama.embedding_length": config["hidden_size"],
        "llama.feed_forward_length": config["intermediate_size"],
        "llama.block_count": config["num_hidden_layers"],
        "llama.attention.head_count": config["num_attention_heads"],
        "llama.attention.head_count_kv": config["num_key_value_heads"],
        "llama.vocab_size": config["vocab_size"],
        "llama.rope.dimension_count": config["head_dim"],
        "general.file_type": 0,
        "tokenizer.ggml.bos_token_id": tokenizer.bos_token_id,
        "tokenizer.ggml.eos_token_id": tokenizer.eos_token_id,
        "tokenizer.ggml.padding_token_id": tokenizer.pad_token_id,
    }
    assert {key: _field(reader, key) for key in expected} == expected
    assert _field(reader, "llama.rope.freq_base") == config["rope_parameters"]["rope_theta"]
    assert _field(reader, "llama.attention.layer_norm_rms_epsilon") == pytest.approx(1e-5)
    assert _field(reader, "tokenizer.ggml.pre") == "llama-bpe"
    assert _field(reader, "tokenizer.chat_template") == tokenizer.chat_template
    assert len(_field(reader, "tokenizer.ggml.tokens")) == config["vocab_size"]

    tensors = {t.name: t for t in reader.tensors}
    hf = load_file(tiny_dir / "model.safetensors")
    q = hf["model.layers.0.self_attn.q_proj.weight"]
    k = hf["model.layers.0.self_attn.k_proj.weight"]
    got_q = np.asarray(tensors["blk.0.attn_q.weight"].data).reshape(q.shape)
    got_k = np.asarray(tensors["blk.0.attn_k.weight"].data).reshape(k.shape)
    np.testing.assert_array_equal(got_q, permute_qk(q, 4).numpy())
    np.testing.assert_array_equal(got_k, permute_qk(k, 2).numpy())  # GQA: 2 KV heads
    q8 = {t.name: t.tensor_type.name for t in GGUFReader(exported["q8_0"]).tensors}
    assert q8["blk.0.attn_norm.weight"] == "F32" and q8["blk.0.attn_q.weight"] == "Q8_0"


def test_unknown_type_is_refused_at_validate() -> None:
    with pytest.raises(ValidationError, match="q4_k_m"):
        GgufOptions(types=["q4_k"])  # llama.cpp names mixes: q4_k_m or q4_k_s
    data = {
        "model": {"name_or_path": "tiny-llama"},
        "data": {"loader": {"name": "jsonl", "path": str(SAMPLE)}},
        "export": {"exporters": [{"name": "gguf", "types": ["f16", "q4_k"]}]},
        "output_dir": "out",
    }
    with pytest.raises(ConfigError, match=r"export\.exporters\.0\.types.*q4_k_m.*got 'q4_k'"):
        build_plan(validate_config(data))


def _copy(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def test_unsupported_architecture_is_refused_before_work(tiny_dir: Path, tmp_path: Path) -> None:
    model = _copy(tiny_dir, tmp_path / "model")
    config = json.loads((model / "config.json").read_text())
    config.update(model_type="gpt_neox", architectures=["GPTNeoXForCausalLM"])
    (model / "config.json").write_text(json.dumps(config))
    with pytest.raises(UserError, match="gpt_neox.*GPTNeoXForCausalLM"):
        write_gguf(model, tmp_path / "out" / "model-f16.gguf", "f16", progress=False)
    assert not (tmp_path / "out").exists()


def test_unsupported_pre_tokenizer_is_refused(tiny_dir: Path, tmp_path: Path) -> None:
    model = _copy(tiny_dir, tmp_path / "model")
    tok = json.loads((model / "tokenizer.json").read_text())
    tok["pre_tokenizer"] = {"type": "Whitespace"}
    (model / "tokenizer.json").write_text(json.dumps(tok))
    with pytest.raises(UserError, match="pre-tokenizer Whitespace"):
        write_gguf(model, tmp_path / "out" / "model-f16.gguf", "f16", progress=False)
    assert not (tmp_path / "out").exists()


def test_export_stage_writes_file_with_provenance(tiny_dir: Path, tmp_path: Path) -> None:
    data = {
        "model": {"name_or_path": "tiny-llama"},
        "data": {"loader": {"name": "jsonl", "path": str(SAMPLE)}},
        "export": {"exporters": [{"name": "gguf", "types": ["q8_0"]}]},
        "output_dir": str(tmp_path / "run"),
    }
    ctx = RunContext(build_plan(validate_config(data)))
    with pytest.raises(UserError, match="lorapipe merge"):
        run_stage(ctx)
    _copy(tiny_dir, ctx.paths.merged)
    write_manifest(ctx.paths.merged)  # as the merge stage does
    summary = run_stage(ctx)
    path = ctx.paths.export_dir("gguf") / "model-q8_0.gguf"
    recipe = path.with_suffix(".Modelfile")  # Ollama's, beside it (test_modelfile.py)
    assert summary["artifacts"] == [
        {"exporter": "gguf", "path": str(p), "bytes": p.stat().st_size} for p in (path, recipe)
    ]
    reader = GGUFReader(path)
    assert _field(reader, "general.base_model.0.name") == "tiny-llama"
    assert _field(reader, "lorapipe.version")
    assert _field(reader, "lorapipe.config_hash") == ctx.config_hash
    assert not [p for p in path.parent.iterdir() if p.name.startswith(".")]  # no temp left
