"""The adapter GGUF, judged by llama.cpp: base GGUF + ``--lora`` adapter GGUF must compute
the merged GGUF's logits."""

from __future__ import annotations

import json
from pathlib import Path

import llama_cpp
import numpy as np
import pytest
import torch
from gguf import GGUFReader
from llama_cpp_material import cpp_logits
from merge_judge import visible_lora
from peft import LoraConfig, PeftModel, get_peft_model
from transformers import AutoModelForCausalLM, AutoTokenizer

from lorapipe.errors import UserError
from lorapipe.model.source import resolve_model_path
from lorapipe.plugins.exporters.gguf.adapter import write_adapter_gguf
from lorapipe.plugins.exporters.gguf.writer import write_gguf

PROMPT = "The quick brown fox jumps over the lazy dog. Paris is the capital of France."


@pytest.fixture(scope="module")
def base_gguf(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("base") / "base-f32.gguf"
    return write_gguf(Path(resolve_model_path("tiny-llama")), out, "f32", progress=False).path


def adapter_and_merged(tmp: Path, **lora: object) -> tuple[Path, Path]:
    """A peft adapter with visible updates, and its merge by peft itself."""
    base = AutoModelForCausalLM.from_pretrained(resolve_model_path("tiny-llama"),
                                                dtype=torch.float32)
    model = get_peft_model(base, LoraConfig(**{"r": 8, "lora_alpha": 16, **lora}))
    visible_lora(model)
    model.save_pretrained(tmp / "adapter")
    merged = PeftModel.from_pretrained(
        AutoModelForCausalLM.from_pretrained(resolve_model_path("tiny-llama"),
                                             dtype=torch.float32), tmp / "adapter")
    merged.merge_and_unload().save_pretrained(tmp / "merged")
    AutoTokenizer.from_pretrained(resolve_model_path("tiny-llama")).save_pretrained(
        tmp / "merged")
    return tmp / "adapter", tmp / "merged"


@pytest.mark.parametrize("lora", [
    {"target_modules": ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj",
                        "down_proj"]},
    # one alpha cannot say these: the scales are folded into B and alpha is 0
    {"target_modules": ["q_proj", "k_proj", "down_proj"], "use_rslora": True,
     "alpha_pattern": {"down_proj": 4}, "rank_pattern": {"k_proj": 4}},
], ids=["lora", "rslora-patterns"])
def test_base_plus_adapter_gguf_is_the_merged_gguf(tmp_path: Path, base_gguf: Path,
                                                   lora: dict) -> None:
    adapter, merged = adapter_and_merged(tmp_path, **lora)
    adapter_gguf = write_adapter_gguf(adapter, merged, tmp_path / "adapter-f32.gguf", "f32")
    merged_gguf = write_gguf(merged, tmp_path / "merged-f32.gguf", "f32", progress=False).path

    reader = GGUFReader(adapter_gguf)
    fields = {name: reader.fields[name] for name in reader.fields}
    assert bytes(fields["general.type"].parts[-1]) == b"adapter"
    alpha = float(fields["adapter.lora.alpha"].parts[-1][0])
    assert alpha == (16.0 if "use_rslora" not in lora else 0.0)
    names = {t.name for t in reader.tensors}
    assert "blk.0.attn_q.weight.lora_a" in names and "blk.1.ffn_down.weight.lora_b" in names

    ids = llama_cpp.Llama(str(merged_gguf), vocab_only=True, verbose=False).tokenize(
        PROMPT.encode())
    with_lora = cpp_logits(base_gguf, ids, lora=adapter_gguf)
    expected = cpp_logits(merged_gguf, ids)
    base = cpp_logits(base_gguf, ids)
    assert np.abs(expected - base).max() > 0.05  # the adapter changes the model visibly
    assert np.abs(with_lora - expected).max() < 2e-3


def test_what_llama_cpp_cannot_apply_is_refused(tmp_path: Path) -> None:
    adapter, merged = adapter_and_merged(tmp_path, target_modules=["q_proj"], use_dora=True)
    with pytest.raises(UserError, match="llama.cpp's --lora cannot apply DoRA"):
        write_adapter_gguf(adapter, merged, tmp_path / "a.gguf", "f16")
    assert not list(tmp_path.glob("*.gguf")) and not list(tmp_path.glob(".*.tmp"))
    assert json.loads((adapter / "adapter_config.json").read_text())["use_dora"]
