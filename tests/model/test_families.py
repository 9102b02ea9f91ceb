"""Real model families end to end: their architectures, tokenizers and chat templates.

Tiny random-weight models of each family's config shape — Llama 3.x (llama3 RoPE
scaling, tied embeddings), Mistral, Qwen2 (q/k/v biases), Qwen3 (q/k norms), Gemma 2
(logit soft-capping, sliding window), Gemma 3 text and Phi-3 (fused ``qkv_proj`` and
``gate_up_proj``) — around the family's real tokenizer from llama.cpp's tree
(``tests/llama_cpp_material.py``) and its own chat template, run through prepare,
4-bit training, merge and GGUF export. Outside tools judge every stage: transformers
and peft the merge, llama.cpp the GGUF files (tokenization, logits), and llama.cpp's
own converter the GGUF metadata and tensors (parity).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import llama_cpp
import numpy as np
import pytest
import torch
from datasets import load_from_disk
from llama_cpp_material import (
    cpp_logits,
    f16_valued_copy,
    llama_cpp_tree,
    quantized_as_llama_does,
    read_gguf,
    real_tokenizer,
)
from merge_judge import merge_errors
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

from lorapipe.config import validate_config
from lorapipe.context import RunContext
from lorapipe.pipeline import run_one_stage
from lorapipe.plan import build_plan

SAMPLE = Path(__file__).resolve().parents[2] / "configs" / "data" / "quickstart.jsonl"
LLAMA_LAYOUT = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
# intermediate 256: ffn_down's rows fill K-quant blocks (the other rows, 64, fall back)
SHAPE = dict(hidden_size=64, intermediate_size=256, num_hidden_layers=2, num_attention_heads=4,
             num_key_value_heads=2, max_position_embeddings=512)
# family → (config beyond SHAPE, modules the default detector targets, real tokenizer)
FAMILIES: dict[str, tuple[dict[str, Any], list[str], str]] = {
    "llama3": (dict(model_type="llama", tie_word_embeddings=True, rope_scaling={
        "rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
        "original_max_position_embeddings": 256}), LLAMA_LAYOUT, "llama3"),
    "mistral": (dict(model_type="mistral", head_dim=16, sliding_window=256), LLAMA_LAYOUT,
                "llama2-spm"),
    "qwen2": (dict(model_type="qwen2"), LLAMA_LAYOUT, "qwen2"),
    "qwen3": (dict(model_type="qwen3", head_dim=16), LLAMA_LAYOUT, "qwen3"),
    "gemma2": (dict(model_type="gemma2", head_dim=16, final_logit_softcapping=30.0,
                    attn_logit_softcapping=50.0, query_pre_attn_scalar=16, sliding_window=256),
               LLAMA_LAYOUT, "gemma"),
    "gemma3": (dict(model_type="gemma3_text", head_dim=16, query_pre_attn_scalar=16,
                    sliding_window=256), LLAMA_LAYOUT, "gemma"),
    "phi3": (dict(model_type="phi3", original_max_position_embeddings=4096),
             ["qkv_proj", "o_proj", "gate_up_proj", "down_proj"], "phi3"),
}
PROBES = [
    "Hello world",
    "The quick brown fox, jumps! over... the lazy dog? (yes) [no] {maybe}",
    "Numbers: 7 42 12345 3.14159 2024-01-15 $19.99 50%",
    "Café naïve Zürich 東京 Москва العربية 🙂 → ✓",
    "  leading spaces\n\nnew lines\tand tabs   ",
    "it's don't we'll THEY'RE",
    "def add(a, b):\n    return a + b\n",
]
CHAT = [{"role": "user", "content": "What is 7 plus 2?"},
        {"role": "assistant", "content": "7 plus 2 is 9."},
        {"role": "user", "content": "And 3 plus 3?"}]


def build_family(name: str, out: Path) -> Path:
    """A seeded tiny model of ``name``'s architecture with its real tokenizer files."""
    extra, _, tokenizer_name = FAMILIES[name]
    shutil.copytree(real_tokenizer(tokenizer_name), out)
    tokenizer = AutoTokenizer.from_pretrained(out)
    settings = {**SHAPE, **extra, "vocab_size": len(tokenizer),
                "bos_token_id": tokenizer.bos_token_id, "eos_token_id": tokenizer.eos_token_id,
                "pad_token_id": tokenizer.pad_token_id}
    config = AutoConfig.for_model(settings.pop("model_type"), **settings)
    torch.manual_seed(0)
    AutoModelForCausalLM.from_config(config, dtype=torch.float32).save_pretrained(out)
    return out


@pytest.fixture(scope="module", params=list(FAMILIES))
def family_run(request: pytest.FixtureRequest,
               tmp_path_factory: pytest.TempPathFactory) -> tuple[str, Path, RunContext]:
    """One run of every stage on the family's model: prepare, nf4 train, merge, GGUF."""
    family = request.param
    tmp = tmp_path_factory.mktemp(family)
    model_dir = build_family(family, tmp / "model")
    data = tmp / "chats.jsonl"
    data.write_text("".join(SAMPLE.read_text().splitlines(keepends=True)[:64]))
    config = validate_config({
        "model": {"name_or_path": str(model_dir), "quantizer": "nf4"},
        "data": {"loader": {"name": "jsonl", "path": str(data)}, "max_length": 128,
                 "validation": {"count": 4}},
        "train": {"max_steps": 3, "micro_batch_size": 4, "gradient_accumulation_steps": 1,
                  "logging_steps": 1, "gradient_checkpointing": False},
        "evaluate": {"evaluators": []},
        "export": {"exporters": [{"name": "gguf", "types": ["f16", "q8_0"]}]},
        "output_dir": str(tmp / "run"),
    })
    ctx = RunContext(build_plan(config))
    for stage in ("prepare", "train", "merge", "export"):
        run_one_stage(ctx, stage)
    return family, model_dir, ctx


def _logits(model: Any, ids: list[int]) -> torch.Tensor:
    with torch.no_grad():
        return model(torch.tensor([ids])).logits[0]


def _reference_tokenizer(merged: Path, tokenizer: Any) -> Any:
    """The reference implementation of the tokenizer the GGUF carries.

    For SentencePiece that is SentencePiece itself on ``tokenizer.model``: transformers'
    fast rendition of these vocabularies differs from it on leading whitespace (``" x"``
    loses its '▁' piece; ``"  a"`` splits differently), while llama.cpp matches it. The
    chat rendering, which starts with a special token, is compared with transformers.
    """
    if (merged / "tokenizer.model").is_file():
        from sentencepiece import SentencePieceProcessor

        processor = SentencePieceProcessor(model_file=str(merged / "tokenizer.model"))
        return processor.encode
    return lambda text: tokenizer(text, add_special_tokens=False)["input_ids"]


def test_family_trains_in_4bit_and_merges_exactly(family_run) -> None:
    family, model_dir, ctx = family_run
    report = json.loads(ctx.paths.model_report.read_text())
    assert sorted(report["targets"]["modules"]) == sorted(FAMILIES[family][1])
    assert report["quantizer"]["quantized"] is True
    losses = [json.loads(line)["loss"] for line in ctx.paths.metrics.read_text().splitlines()
              if '"loss"' in line]
    assert len(losses) == 3 and all(torch.isfinite(torch.tensor(losses)))

    ids = list(load_from_disk(str(ctx.paths.validation_data))[0]["input_ids"])
    error, change = merge_errors(model_dir, ctx.paths.adapter, ctx.paths.merged, ids)
    assert error < 1e-4
    assert change > 0  # the adapter changed the model
    # merged/ carries the base's tokenizer files, tokenizer.model included
    for item in model_dir.iterdir():
        if item.name.startswith(("tokenizer", "special_tokens", "added_tokens")):
            assert (ctx.paths.merged / item.name).read_bytes() == item.read_bytes(), item.name


def test_family_gguf_tokenizes_and_computes_like_transformers(family_run) -> None:
    _, _, ctx = family_run
    merged = ctx.paths.merged
    export = ctx.paths.export_dir("gguf")
    tokenizer = AutoTokenizer.from_pretrained(merged)
    reference = _reference_tokenizer(merged, tokenizer)
    chat = tokenizer.apply_chat_template(CHAT, tokenize=False, add_generation_prompt=True)
    llm = llama_cpp.Llama(str(export / "model-f16.gguf"), vocab_only=True, verbose=False)
    try:
        for text in PROBES:
            assert llm.tokenize(text.encode(), add_bos=False, special=True) == reference(text)
        expected = tokenizer(chat, add_special_tokens=False)["input_ids"]
        assert llm.tokenize(chat.encode(), add_bos=False, special=True) == expected
        assert llm.metadata["tokenizer.chat_template"] == tokenizer.chat_template
    finally:
        llm.close()

    ids = tokenizer(chat, add_special_tokens=False)["input_ids"]
    hf = _logits(AutoModelForCausalLM.from_pretrained(merged, dtype=torch.float32), ids).numpy()
    f16 = cpp_logits(export / "model-f16.gguf", ids)
    assert np.abs(f16 - hf).max() < 0.02 * hf.std() + 1e-3, np.abs(f16 - hf).max()
    q8 = cpp_logits(export / "model-q8_0.gguf", ids)
    error = np.sqrt(np.mean((q8 - hf) ** 2))
    assert error / hf.std() < 0.1, f"q8_0 relative RMS error {error / hf.std():.4f}"


def _fields(path: Path) -> tuple[dict[str, Any], dict[str, tuple[str, tuple, np.ndarray]]]:
    fields, found = read_gguf(path)
    meta = {key: value for key, value in fields.items()
            if not key.startswith(("general.", "lorapipe."))}
    meta["general.architecture"] = fields["general.architecture"]
    meta["general.file_type"] = fields["general.file_type"]
    tensors = {t.name: (t.type.name, t.shape, t.data) for t in found.values()}
    return meta, tensors


def test_family_gguf_has_parity_with_llama_cpp_converter(family_run, tmp_path: Path) -> None:
    _, _, ctx = family_run
    reference = tmp_path / "converter-f16.gguf"
    subprocess.run([sys.executable, str(llama_cpp_tree() / "convert_hf_to_gguf.py"),
                    str(ctx.paths.merged), "--outtype", "f16", "--outfile", str(reference)],
                   check=True, capture_output=True)
    ours_meta, ours = _fields(ctx.paths.export_dir("gguf") / "model-f16.gguf")
    their_meta, theirs = _fields(reference)
    assert ours_meta == their_meta
    assert {name: t[:2] for name, t in ours.items()} == {name: t[:2] for name, t in theirs.items()}
    for name, (_, _, data) in ours.items():
        if name.startswith("rope_"):  # computed, not read: float32 rounding may differ
            np.testing.assert_allclose(data.view(np.float32), theirs[name][2].view(np.float32),
                                       rtol=1e-6, err_msg=name)
        else:
            np.testing.assert_array_equal(data, theirs[name][2], err_msg=name)


K_MIXES = {"q4_k_m": llama_cpp.LLAMA_FTYPE_MOSTLY_Q4_K_M,
           "q5_k_m": llama_cpp.LLAMA_FTYPE_MOSTLY_Q5_K_M,
           "q6_k": llama_cpp.LLAMA_FTYPE_MOSTLY_Q6_K}


def test_family_k_quants_are_llama_quantizes(family_run, tmp_path: Path) -> None:
    """Each K mix of the family's merged model: the tensor types and quantized bytes
    llama.cpp's own quantizer gives (from our f16 file, so both start from the same f16
    values), and llama.cpp runs it."""
    _, _, ctx = family_run
    f16 = ctx.paths.export_dir("gguf") / "model-f16.gguf"  # the export stage's
    # ours starts from the same f16 values llama-quantize reads from that file
    rounded = f16_valued_copy(ctx.paths.merged, tmp_path / "merged-f16-values")
    ids = AutoTokenizer.from_pretrained(rounded)(PROBES[1])["input_ids"]
    for type_name, ftype in K_MIXES.items():
        ours = quantized_as_llama_does(rounded, f16, type_name, ftype, tmp_path)
        types = {t.name: t.type.name for t in read_gguf(ours)[1].values()}
        assert "Q6_K" in types.values()  # ffn_down: K-quant blocks, not only fallbacks
        assert np.isfinite(cpp_logits(ours, ids)).all()


def test_gguf_export_refuses_other_architectures_before_training(tmp_path: Path) -> None:
    """An architecture outside the list is refused at validate/run start (not after
    training), naming the model type and the llama.cpp command to run instead."""
    from lorapipe.errors import UserError
    from lorapipe.model.source import resolve_model_path
    from lorapipe.pipeline import check_exporters

    model_dir = tmp_path / "model"
    shutil.copytree(resolve_model_path("tiny-llama"), model_dir)
    config = json.loads((model_dir / "config.json").read_text())
    config.update(model_type="starcoder2", architectures=["Starcoder2ForCausalLM"])
    (model_dir / "config.json").write_text(json.dumps(config))
    run = validate_config({
        "model": {"name_or_path": str(model_dir)},
        "data": {"loader": {"name": "jsonl", "path": str(SAMPLE)}, "max_length": 256},
        "export": {"exporters": [{"name": "gguf", "types": ["f16"]}]},
        "output_dir": str(tmp_path / "run"),
    })
    with pytest.raises(UserError, match=r"model_type 'starcoder2'.*convert_hf_to_gguf\.py "
                                        r"OUTPUT_DIR/merged"):
        check_exporters(RunContext(build_plan(run)))
    assert not (tmp_path / "run").exists()
