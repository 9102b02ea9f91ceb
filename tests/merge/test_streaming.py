"""The shard-by-shard merge against peft: every kind of tensor an adapter can change.

Each case builds a tiny random model of a real architecture, puts a random (not
zero-initialised) adapter on it with peft, and requires the merged checkpoint, loaded by
transformers, to compute what peft computes with the adapter unmerged.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from peft import LoraConfig, PeftModel, get_peft_model
from transformers import (
    AutoModelForCausalLM,
    GPT2Config,
    GPT2LMHeadModel,
    LlamaConfig,
    LlamaForCausalLM,
    Qwen2Config,
    Qwen2ForCausalLM,
)

from lorapipe.errors import UserError
from lorapipe.merge.streaming import Architecture, merge_checkpoint

IDS = torch.tensor([[1, 5, 9, 17, 33, 2, 60, 7]])
SMALL = {"vocab_size": 64, "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2,
         "num_attention_heads": 4, "num_key_value_heads": 2}


def _llama(tied: bool = False) -> LlamaForCausalLM:
    return LlamaForCausalLM(LlamaConfig(**SMALL, tie_word_embeddings=tied))


def _qwen2() -> Qwen2ForCausalLM:
    return Qwen2ForCausalLM(Qwen2Config(**SMALL, tie_word_embeddings=True))


def _gpt2() -> GPT2LMHeadModel:
    return GPT2LMHeadModel(GPT2Config(vocab_size=64, n_embd=32, n_layer=2, n_head=4,
                                      n_positions=64))


def _merge(tmp_path: Path, build, lora: LoraConfig, *, max_shard_size: str = "5GB",
           shard_bytes: int = 1 << 30) -> tuple[Path, torch.Tensor, dict]:
    """Save base and a randomised adapter, merge them; return merged/, peft's logits and
    the merge's report."""
    torch.manual_seed(0)
    base = build()
    base_dir, adapter_dir, out = tmp_path / "base", tmp_path / "adapter", tmp_path / "merged"
    base.save_pretrained(base_dir, max_shard_size=max_shard_size)
    architecture = Architecture.of(base)
    model = get_peft_model(base, lora)
    with torch.no_grad():  # what training would have moved away from the initial values
        for param in model.parameters():
            if param.requires_grad:
                param.add_(torch.randn_like(param) * 0.1)
    model.save_pretrained(adapter_dir)
    model.eval()
    with torch.no_grad():
        expected = model(input_ids=IDS).logits
    out.mkdir()
    report = merge_checkpoint(base_dir, adapter_dir, out, dtype=torch.float32,
                              shard_bytes=shard_bytes, architecture=architecture)
    return out, expected, report


def _logits(model_dir: Path) -> torch.Tensor:
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    with torch.no_grad():
        return model(input_ids=IDS).logits


CASES = {
    "lora": (_llama, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj", "down_proj"],
                                init_lora_weights=False)),
    "rslora with a per-module alpha": (_llama, LoraConfig(
        r=8, lora_alpha=16, use_rslora=True, alpha_pattern={"v_proj": 4},
        target_modules=["q_proj", "v_proj"], init_lora_weights=False)),
    "dora": (_llama, LoraConfig(r=4, lora_alpha=8, use_dora=True, init_lora_weights=False,
                                target_modules=["q_proj", "k_proj", "gate_proj"])),
    "trained biases": (_qwen2, LoraConfig(r=4, target_modules=["q_proj", "v_proj"],
                                          bias="all", init_lora_weights=False)),
    "conv1d (gpt-2)": (_gpt2, LoraConfig(r=4, target_modules=["c_attn", "c_proj", "c_fc"],
                                         fan_in_fan_out=True, init_lora_weights=False)),
    "pissa": (_llama, LoraConfig(r=4, lora_alpha=4, target_modules=["q_proj", "v_proj"],
                                 init_lora_weights="pissa")),
    "olora": (_llama, LoraConfig(r=4, lora_alpha=4, target_modules=["q_proj", "o_proj"],
                                 init_lora_weights="olora")),
    "untied head": (_llama, LoraConfig(r=4, target_modules=["q_proj"], init_lora_weights=False,
                                       modules_to_save=["lm_head"])),
}


@pytest.mark.parametrize("case", list(CASES))
def test_the_merged_checkpoint_computes_what_peft_computes(tmp_path: Path, case: str) -> None:
    build, lora = CASES[case]
    out, expected, report = _merge(tmp_path, build, lora)
    got = _logits(out)
    assert (got - expected).abs().max() < 1e-4, case
    assert report["max_probe_rel_error"] < 1e-5
    assert report["updated_modules"] > 0
    base = _logits(tmp_path / "base")
    assert (base - expected).abs().max() > 1e-2  # the adapter changed the model
    config = json.loads((out / "config.json").read_text())
    assert config["dtype"] == "float32" and config["use_cache"] is True


@pytest.mark.parametrize("target", ["lm_head", "embed_tokens"])
def test_a_tied_embedding_changed_on_one_side_is_untied(tmp_path: Path, target: str) -> None:
    """Base + adapter uses a changed head with the original input embedding (or the
    reverse): the merged model stores both and says they are no longer tied."""
    lora = (LoraConfig(r=4, target_modules=["q_proj"], modules_to_save=["lm_head"],
                       init_lora_weights=False) if target == "lm_head" else
            LoraConfig(r=4, target_modules=["q_proj", "embed_tokens"], init_lora_weights=False))
    out, expected, report = _merge(tmp_path, lambda: _llama(tied=True), lora)
    assert report["untied_embeddings"]
    assert json.loads((out / "config.json").read_text())["tie_word_embeddings"] is False
    assert (_logits(out) - expected).abs().max() < 1e-4


def test_a_sharded_base_merges_into_bounded_shards(tmp_path: Path) -> None:
    lora = LoraConfig(r=4, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
    out, expected, report = _merge(tmp_path, _llama, lora, max_shard_size="20KB",
                                   shard_bytes=20_000)
    assert len(list((tmp_path / "base").glob("model-*.safetensors"))) > 1
    index = json.loads((out / "model.safetensors.index.json").read_text())
    files = sorted(out.glob("model-*.safetensors"))
    assert report["shards"] == len(files) > 3
    assert set(index["weight_map"].values()) == {path.name for path in files}
    largest_tensor = 64 * 32 * 4  # the embedding
    assert max(path.stat().st_size for path in files) <= 20_000 + largest_tensor + 1_000
    assert not list(out.glob(".shard-*"))
    assert (_logits(out) - expected).abs().max() < 1e-4


def test_an_adapter_of_another_model_is_refused_by_module(tmp_path: Path) -> None:
    lora = LoraConfig(r=4, target_modules=["q_proj"], init_lora_weights=False)
    _merge(tmp_path, _llama, lora)
    other = tmp_path / "other"
    _gpt2().save_pretrained(other)
    with pytest.raises(UserError, match=r"updates model\.layers\.0\.self_attn\.q_proj"):
        merge_checkpoint(other, tmp_path / "adapter", tmp_path / "again", dtype=torch.float32,
                         shard_bytes=1 << 30, architecture=Architecture.of(_gpt2()))


def test_peft_agrees_with_the_merged_tensors(tmp_path: Path) -> None:
    """Tensor for tensor, the merge equals peft's own merge_and_unload (float32)."""
    lora = LoraConfig(r=4, target_modules=["q_proj", "v_proj"], use_dora=True,
                      init_lora_weights=False)
    out, _, _ = _merge(tmp_path, _llama, lora)
    base = AutoModelForCausalLM.from_pretrained(tmp_path / "base", dtype=torch.float32)
    peft_merged = PeftModel.from_pretrained(base, tmp_path / "adapter").merge_and_unload()
    ours = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32).state_dict()
    for key, tensor in peft_merged.state_dict().items():
        assert torch.allclose(ours[key], tensor, atol=1e-6), key
