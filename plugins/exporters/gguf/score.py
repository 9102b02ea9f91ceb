"""The shipped file scored: each exported GGUF's response perplexity through llama.cpp.

Quantization costs quality, and the file a user ships is the GGUF, not ``merged/``. So
the held-out samples the evaluate stage scored (the test split when there is one) are
run through llama.cpp itself, and the perplexity of the tokens the model was trained to
produce is set beside ``merged/``'s on the same samples. Token ids are the prepared
ones: the GGUF carries the same vocabulary, so nothing is re-tokenized.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from lorapipe.plugin import UserError

IGNORE = -100


@dataclass(frozen=True)
class Samples:
    """Held-out token ids and labels, and which split they are."""

    split: str
    dataset: Any  # datasets.Dataset: input_ids, attention_mask, labels

    @property
    def rows(self) -> list[tuple[list[int], list[int]]]:
        return list(zip(self.dataset["input_ids"], self.dataset["labels"], strict=True))

    @classmethod
    def held_out(cls, paths: Any, limit: int) -> Samples:
        """Up to ``limit`` samples of the run's test split, else its validation split;
        ``paths`` is the run's layout (``RunInfo.paths``)."""
        from datasets import load_from_disk

        for split, directory in (("test", paths.test_data),
                                 ("validation", paths.validation_data)):
            if (directory / "dataset_info.json").is_file():
                data = load_from_disk(str(directory))
                return cls(split, data.select(range(min(limit, len(data)))))
        raise UserError(f"{paths.data}: no held-out samples to score the GGUF on (no test or "
                        "validation split); run `lorapipe prepare` or remove the gguf "
                        "exporter's score option")


def _response_nll(logits: np.ndarray, ids: list[int], labels: list[int]) -> tuple[float, int]:
    """Summed NLL of the trained tokens (label != -100), each predicted from the one before."""
    logits = logits[: len(ids) - 1].astype(np.float64)
    top = logits.max(axis=1, keepdims=True)
    log_z = top[:, 0] + np.log(np.exp(logits - top).sum(axis=1))
    targets = np.asarray(ids[1:])
    nll = log_z - logits[np.arange(len(targets)), targets]
    trained = np.asarray(labels[1:]) != IGNORE
    return float(nll[trained].sum()), int(trained.sum())


def gguf_perplexity(path: Path, samples: Samples) -> float:
    """Response perplexity of ``path`` run by llama.cpp on ``samples``."""
    from llama_cpp import Llama
    from tqdm import tqdm

    rows = samples.rows
    n_ctx = max(len(ids) for ids, _ in rows)
    llm = Llama(model_path=str(path), n_ctx=n_ctx, n_batch=n_ctx, logits_all=True,
                verbose=False)
    total, count = 0.0, 0
    try:
        for ids, labels in tqdm(rows, desc=f"scoring {path.name}", unit="seq"):
            llm.reset()
            llm.eval(ids)
            nll, n = _response_nll(np.asarray(llm.scores[: len(ids)]), ids, labels)
            total, count = total + nll, count + n
    finally:
        llm.close()
    return math.exp(total / count)


def merged_perplexity(merged_dir: Path, samples: Samples, *, trust_remote_code: bool) -> float:
    """Response perplexity of ``merged/`` (transformers, float32) on the same samples, as
    the evaluate stage computes it."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from lorapipe.plugin import from_pretrained, pad_token_id, token_nll

    trust = {"trust_remote_code": trust_remote_code}
    model = from_pretrained(AutoModelForCausalLM, merged_dir, dtype=torch.float32, **trust)
    pad = pad_token_id(from_pretrained(AutoTokenizer, merged_dir, **trust))
    return token_nll(model, samples.dataset, batch_size=8, pad_id=pad).perplexity()["response"]


def score_report(merged: float, files: dict[str, float], max_increase: float,
                 split: str) -> dict[str, Any]:
    """Each file's perplexity, its increase over ``merged/``'s, and which exceed the limit."""
    scored = {name: {"perplexity": value, "increase": value / merged - 1}
              for name, value in files.items()}
    return {"split": split, "merged": merged, "files": scored, "max_increase": max_increase,
            "exceeded": [name for name, s in scored.items() if s["increase"] > max_increase]}
