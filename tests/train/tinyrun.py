"""A tiny, fully deterministic training setup shared by the tests and their subprocesses."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from datasets import Dataset
from peft import LoraConfig, PeftModel, get_peft_model
from transformers import AutoModelForCausalLM

from lorapipe.artifacts import RunPaths
from lorapipe.config import TrainConfig
from lorapipe.model.source import resolve_model_path
from lorapipe.train import TrainSetup, train

PAD = 2044  # tiny-llama's <|pad|>


def make_model(dropout: float = 0.0, nf4: bool = False,
               dtype: torch.dtype = torch.float32) -> PeftModel:
    """tiny-llama with LoRA; ``nf4``: its linear layers in bitsandbytes NF4 stored as fp32
    words, the storage FSDP can shard (QLoRA's default uint8 it cannot)."""
    torch.manual_seed(0)
    quantization = None
    if nf4:
        from transformers import BitsAndBytesConfig

        quantization = BitsAndBytesConfig(
            load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=torch.float32, bnb_4bit_quant_storage=torch.float32)
    base = AutoModelForCausalLM.from_pretrained(resolve_model_path("tiny-llama"), dtype=dtype,
                                                quantization_config=quantization)
    lora = LoraConfig(r=4, lora_alpha=8, lora_dropout=dropout, task_type="CAUSAL_LM",
                      target_modules=["q_proj", "v_proj", "down_proj"])
    return get_peft_model(base, lora)


def make_data(n: int, seed: int = 0, lengths: tuple[int, int] = (6, 40)) -> Dataset:
    """Variable-length rows; the first third of each is a prompt (-100), plus ignored columns."""
    rng = np.random.default_rng(seed)
    rows: dict[str, list[Any]] = {k: [] for k in
                                   ("input_ids", "attention_mask", "labels", "messages", "source")}
    for _ in range(n):
        length = int(rng.integers(*lengths))
        ids = rng.integers(10, 2000, size=length).tolist()
        prompt = length // 3
        rows["input_ids"].append(ids)
        rows["attention_mask"].append([1] * length)
        rows["labels"].append([-100] * prompt + ids[prompt:])
        rows["messages"].append([{"role": "user", "content": "x"}])
        rows["source"].append("synthetic")
    return Dataset.from_dict(rows)


def make_pairs(n: int, seed: int = 0) -> Dataset:
    """Preference pairs: one prompt per pair, replies of different lengths on each side."""
    rng = np.random.default_rng(seed)
    rows: dict[str, list[Any]] = {k: [] for k in ("input_ids", "labels", "rejected_input_ids",
                                                  "rejected_labels", "kind")}
    for _ in range(n):
        prompt = rng.integers(10, 2000, size=int(rng.integers(3, 20))).tolist()
        for side in ("", "rejected_"):
            reply = rng.integers(10, 2000, size=int(rng.integers(2, 24))).tolist()
            rows[f"{side}input_ids"].append(prompt + reply)
            rows[f"{side}labels"].append([-100] * len(prompt) + reply)
        rows["kind"].append("preference")
    return Dataset.from_dict(rows)


def make_rated(n: int, seed: int = 0) -> Dataset:
    """Unpaired replies (KTO): make_pairs' chosen sides, rated desirable and not in turn."""
    pairs = make_pairs(n, seed)
    return Dataset.from_dict({"input_ids": pairs["input_ids"], "labels": pairs["labels"],
                              "desirable": [i % 2 for i in range(n)],
                              "kind": ["unpaired"] * n})


def config(**changes: Any) -> TrainConfig:
    base = dict(epochs=1, micro_batch_size=2, gradient_accumulation_steps=2, learning_rate=1e-3,
                warmup_steps=1, logging_steps=1, save_steps=4, seed=0)
    return TrainConfig(**{**base, **changes})


def run(out: Path, model: PeftModel, train_data: Dataset, val_data: Dataset | None,
        cfg: TrainConfig, **kwargs: Any) -> dict[str, Any]:
    """``train`` with the tiny run's setup; ``kwargs`` are further ``TrainSetup`` fields."""
    setup = TrainSetup(config=cfg, paths=RunPaths(out), pad_token_id=PAD, max_length=128,
                       config_hash=kwargs.pop("config_hash", "7e57"), **kwargs)
    return train(model, train_data, val_data, setup)


def adapter_weights(out: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(out / "adapter" / "adapter_model.safetensors"))
