"""The gpt2 detector and the tiny GPT-2: determinism, peft's view of the targets, and a
prepare → train → merge run whose merged model transformers loads and PEFT agrees with."""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml
from lorapipe_gpt2.targets import Gpt2Targets
from lorapipe_gpt2.tiny import build_tiny_gpt2
from peft import LoraConfig, PeftModel, get_peft_model
from transformers import AutoModelForCausalLM, AutoTokenizer

from lorapipe.context import RunContext
from lorapipe.model.source import resolve_model_path
from lorapipe.model.targets import check_names, targets_are_transposed
from lorapipe.pipeline import run_one_stage
from lorapipe.plan import load_plan
from lorapipe.registry import get_registry

QUICKSTART = Path(__file__).resolve().parents[3] / "configs" / "data" / "quickstart.jsonl"


@pytest.fixture(scope="module")
def tiny_gpt2(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_gpt2(tmp_path_factory.mktemp("tiny-gpt2"))


def load(path: Path) -> Any:
    return AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)


def test_builder_is_deterministic(tiny_gpt2: Path, tmp_path: Path) -> None:
    again = build_tiny_gpt2(tmp_path / "again")
    for name in ("model.safetensors", "tokenizer.json", "tokenizer_config.json", "config.json"):
        assert (again / name).read_bytes() == (tiny_gpt2 / name).read_bytes(), name
    other = build_tiny_gpt2(tmp_path / "other", seed=1)
    weights = "model.safetensors"
    assert (other / weights).read_bytes() != (tiny_gpt2 / weights).read_bytes()


def test_tiny_gpt2_is_a_real_gpt2_with_a_chat_template(tiny_gpt2: Path) -> None:
    model = load(tiny_gpt2)
    tokenizer = AutoTokenizer.from_pretrained(tiny_gpt2)
    assert type(model).__name__ == "GPT2LMHeadModel"
    assert model.get_input_embeddings().weight is model.get_output_embeddings().weight  # tied
    text = tokenizer.apply_chat_template([{"role": "user", "content": "Hi"}], tokenize=False,
                                         add_generation_prompt=True)
    assert text == "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
    ids = tokenizer("The capital of France is Paris.")["input_ids"]
    assert tokenizer.decode(ids) == "The capital of France is Paris."


def test_detector_picks_gpt2_layers_with_fan_in_fan_out(tiny_gpt2: Path) -> None:
    model = load(tiny_gpt2)
    selection = Gpt2Targets().detect(model)
    assert selection.modules == ["c_attn", "c_proj", "c_fc"]
    assert targets_are_transposed(model, selection.modules)
    for preset, expected in {"attention": ["c_attn", "attn.c_proj"],
                             "mlp": ["c_fc", "mlp.c_proj"]}.items():
        chosen = Gpt2Targets(Gpt2Targets.Options(preset=preset)).detect(model)
        assert chosen.modules == expected
        check_names(model, chosen.modules)  # each name matches a layer as peft matches it


def test_detector_ignores_llama(lorapipe_cache: Path) -> None:
    llama = AutoModelForCausalLM.from_pretrained(resolve_model_path("tiny-llama"))
    assert Gpt2Targets().detect(llama) is None


def test_peft_applies_and_merges_the_selection_exactly(tiny_gpt2: Path) -> None:
    """With fan_in_fan_out from the selection peft raises no Conv1D warning, and the merged
    weights give the same logits as the unmerged adapter."""
    model = load(tiny_gpt2)
    selection = Gpt2Targets(Gpt2Targets.Options(preset="attention")).detect(model)
    transposed = targets_are_transposed(model, selection.modules)
    config = LoraConfig(r=4, lora_alpha=8, target_modules=selection.modules,
                        fan_in_fan_out=transposed, task_type="CAUSAL_LM")
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message=".*fan_in_fan_out.*")
        peft_model = get_peft_model(model, config)
    adapted = {n.rsplit(".", 2)[0] for n, _ in peft_model.named_parameters() if "lora_B" in n}
    # c_attn and attn.c_proj in each of the 2 blocks; no MLP layer
    assert len(adapted) == 4 and all(".attn." in n for n in adapted)
    torch.manual_seed(0)
    for name, param in peft_model.named_parameters():
        if "lora_B" in name:
            param.data.normal_(0, 0.5)
    ids = torch.tensor([[5, 17, 99, 240, 3, 600]])
    with torch.no_grad():
        unmerged = peft_model(ids).logits
        merged = peft_model.merge_and_unload()(ids).logits
    assert not torch.allclose(unmerged, load(tiny_gpt2)(ids).logits, atol=1e-3)
    torch.testing.assert_close(merged, unmerged, atol=1e-4, rtol=1e-4)


def test_prepare_train_merge_on_tiny_gpt2(tiny_gpt2: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    config = {
        "model": {"name_or_path": str(tiny_gpt2), "quantizer": "none"},
        "adapter": {"r": 4, "alpha": 8, "dropout": 0.0},
        "data": {"loader": {"name": "jsonl", "path": str(QUICKSTART)}, "max_length": 128,
                 "validation": {"count": 8}},
        "train": {"max_steps": 2, "micro_batch_size": 4, "gradient_accumulation_steps": 1,
                  "gradient_checkpointing": False, "learning_rate": 1e-3, "save_steps": 2},
        "evaluate": {"evaluators": []},
        "output_dir": str(out),
    }
    path = tmp_path / "gpt2.yaml"
    path.write_text(yaml.safe_dump(config))
    registry = get_registry()
    ctx = RunContext(load_plan(path, registry=registry))
    for stage in ("prepare", "train", "merge"):
        run_one_stage(ctx, stage)

    report = json.loads((out / "model_report.json").read_text())
    assert report["targets"]["detector"] == "gpt2"  # found among all detectors by priority
    assert json.loads((out / "adapter" / "adapter_config.json").read_text())["fan_in_fan_out"]
    merged = load(out / "merged")
    assert type(merged).__name__ == "GPT2LMHeadModel"
    reference = PeftModel.from_pretrained(load(tiny_gpt2), out / "adapter")
    ids = torch.tensor([AutoTokenizer.from_pretrained(out / "merged")("Hello there")["input_ids"]])
    with torch.no_grad():
        torch.testing.assert_close(merged(ids).logits, reference(ids).logits,
                                   atol=1e-4, rtol=1e-4)
