"""A run directory with validation data and a non-trivial adapter on tiny-llama."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from lorapipe.config import validate_config
from lorapipe.context import RunContext
from lorapipe.models import resolve_model_path
from lorapipe.registry import get_registry

SAMPLE = Path(__file__).resolve().parents[2] / "configs" / "data" / "quickstart.jsonl"
CONVERSATIONS = [
    [{"role": "user", "content": "What is the capital of France?"},
     {"role": "assistant", "content": "The capital of France is Paris."}],
    [{"role": "system", "content": "You are a helpful assistant."},
     {"role": "user", "content": "Two plus three?"},
     {"role": "assistant", "content": "Five."}],
    [{"role": "user", "content": "Write a short poem about the sea, please."},
     {"role": "assistant", "content": "The sea is wide, the sea is deep, it sings the sailors "
                                      "off to sleep."}],
]


def _context(output_dir: Path, **sections) -> RunContext:
    data = {
        "model": {"name_or_path": "tiny-llama", "quantizer": "none"},
        "data": {"loader": {"name": "jsonl", "path": str(SAMPLE)}},
        "output_dir": str(output_dir),
        **sections,
    }
    registry = get_registry()
    return RunContext(validate_config(data, registry), registry)


def validation_rows(tokenizer) -> dict[str, list]:
    """Columns as the prepare stage writes them; only the last reply is trained."""
    rows: dict[str, list] = {k: [] for k in
                             ("input_ids", "attention_mask", "labels", "messages", "source")}
    for messages in CONVERSATIONS:
        prompt = tokenizer.apply_chat_template(messages[:-1], add_generation_prompt=True,
                                               tokenize=False)
        full = tokenizer.apply_chat_template(messages, tokenize=False)
        ids = tokenizer(full, add_special_tokens=False)["input_ids"]
        n_prompt = len(tokenizer(prompt, add_special_tokens=False)["input_ids"])
        rows["input_ids"].append(ids)
        rows["attention_mask"].append([1] * len(ids))
        rows["labels"].append([-100] * n_prompt + ids[n_prompt:])
        rows["messages"].append(json.dumps(messages))
        rows["source"].append("test")
    return rows


def save_adapter(path: Path) -> None:
    """A LoRA adapter with non-zero B, so the fine-tuned model differs from the base."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(resolve_model_path("tiny-llama"),
                                                dtype=torch.float32)
    model = get_peft_model(base, LoraConfig(r=4, lora_alpha=8,
                                            target_modules=["q_proj", "v_proj", "down_proj"]))
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.copy_(torch.randn(param.shape, generator=generator) * 0.05)
    model.save_pretrained(path)


@pytest.fixture
def make_context():
    return _context


@pytest.fixture
def eval_run(tmp_path: Path) -> RunContext:
    from datasets import Dataset
    from transformers import AutoTokenizer

    ctx = _context(tmp_path / "run")
    tokenizer = AutoTokenizer.from_pretrained(resolve_model_path("tiny-llama"))
    Dataset.from_dict(validation_rows(tokenizer)).save_to_disk(str(ctx.paths.validation_data))
    save_adapter(ctx.paths.adapter)
    return ctx
