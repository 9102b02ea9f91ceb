"""Logits streamed module by module (a model larger than memory) equal the in-memory ones:
base + adapter as peft computes it unmerged, and the merged checkpoint as transformers
computes it, for every kind of adapter the merge handles except PiSSA/OLoRA."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from peft import LoraConfig, PeftConfig, get_peft_model
from safetensors.torch import load_file
from test_streaming import CASES, IDS, SMALL, _llama, _logits, _merge
from transformers import AutoConfig, AutoModelForCausalLM, Gemma3ForCausalLM, Gemma3TextConfig

from lorapipe.merge.streamed_logits import (
    Checkpoint,
    adapter_source,
    materialize_buffers,
    model_source,
    streamed_logits,
)


def _on_meta(model_dir: Path) -> torch.nn.Module:
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(model_dir))
    materialize_buffers(model)
    return model.eval()


def _streamed_reference(tmp_path: Path) -> torch.Tensor:
    adapter_dir = tmp_path / "adapter"
    model = get_peft_model(_on_meta(tmp_path / "base"), PeftConfig.from_pretrained(adapter_dir))
    model.eval()
    source = adapter_source(model, Checkpoint(tmp_path / "base"),
                            load_file(str(adapter_dir / "adapter_model.safetensors")))
    assert all(p.is_meta for p in model.parameters())  # nothing is held
    return streamed_logits(model, source, IDS.tolist(), torch.float32)[0]


def _streamed_merged(out: Path) -> torch.Tensor:
    model = _on_meta(out)
    return streamed_logits(model, model_source(model, Checkpoint(out)), IDS.tolist(),
                           torch.float32)[0]


def _gemma3() -> Gemma3ForCausalLM:
    """Non-persistent buffers beyond rotary frequencies (the embedding scale) and two
    rotary embeddings (local and global layers)."""
    return Gemma3ForCausalLM(Gemma3TextConfig(**SMALL, head_dim=8, sliding_window=4,
                                              tie_word_embeddings=True))


STREAMED = {**{name: case for name, case in CASES.items() if name not in ("pissa", "olora")},
            "gemma 3": (_gemma3, LoraConfig(r=4, target_modules=["q_proj", "down_proj"],
                                             init_lora_weights=False)),
            "lora on a tied embedding": (lambda: _llama(tied=True), LoraConfig(
                r=4, target_modules=["q_proj", "embed_tokens"], init_lora_weights=False)),
            "tied head saved": (lambda: _llama(tied=True), LoraConfig(
                r=4, target_modules=["q_proj"], modules_to_save=["lm_head"],
                init_lora_weights=False))}


@pytest.mark.parametrize("case", list(STREAMED))
def test_streamed_logits_equal_the_in_memory_ones(tmp_path: Path, case: str) -> None:
    build, lora = STREAMED[case]
    out, expected, _ = _merge(tmp_path, build, lora)
    torch.testing.assert_close(_streamed_reference(tmp_path), expected[0], rtol=0, atol=1e-5)
    torch.testing.assert_close(_streamed_merged(out), _logits(out)[0], rtol=0, atol=1e-5)
