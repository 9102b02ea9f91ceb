"""A run directory with validation data and a non-trivial adapter on tiny-llama."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from lorapipe.context import RunContext
from lorapipe.manifest import write_manifest
from lorapipe.model.source import resolve_model_path

CONVERSATIONS = [
    [
        {"role": "user", "content": "What is the capital of France?"},
        {"role": "assistant", "content": "The capital of France is Paris."},
    ],
    [
        {"role": "system", "content": "You are a helpful assistant."},
        {"role": "user", "content": "Two plus three?"},
        {"role": "assistant", "content": "Five."},
    ],
    [
        {"role": "user", "content": "Write a short poem about the sea, please."},
        {
            "role": "assistant",
            "content": "The sea is wide, the sea is deep, it sings the sailors off to sleep.",
        },
    ],
]


def validation_rows(tokenizer) -> dict[str, list]:
    """Columns as the prepare stage writes them; only the last reply is trained."""
    rows: dict[str, list] = {
        k: [] for k in ("input_ids", "attention_mask", "labels", "messages", "source")
    }
    for messages in CONVERSATIONS:
        prompt = tokenizer.apply_chat_template(
            messages[:-1], add_generation_prompt=True, tokenize=False
        )
        full = tokenizer.apply_chat_template(messages, tokenize=False)
        ids = tokenizer(full, add_special_tokens=False)["input_ids"]
        n_prompt = len(tokenizer(prompt, add_special_tokens=False)["input_ids"])
        rows["input_ids"].append(ids)
        rows["attention_mask"].append([1] * len(ids))
        rows["labels"].append([-100] * n_prompt + ids[n_prompt:])
        rows["messages"].append(json.dumps(messages))
        rows["source"].append("test")
    return rows


@pytest.fixture
def eval_run(tmp_path: Path, make_context, save_adapter) -> RunContext:  # noqa: ANN001
    from datasets import Dataset
    from transformers import AutoTokenizer

    ctx = make_context(tmp_path / "run", model={"name_or_path": "tiny-llama", "quantizer": "none"})
    tokenizer = AutoTokenizer.from_pretrained(resolve_model_path("tiny-llama"))
    Dataset.from_dict(validation_rows(tokenizer)).save_to_disk(str(ctx.paths.validation_data))
    write_manifest(ctx.paths.data)  # as prepare does
    save_adapter(ctx.paths.adapter, targets=["q_proj", "v_proj", "down_proj"])
    return ctx
