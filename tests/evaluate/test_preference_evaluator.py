"""The ``preference`` evaluator on held-out pairs: every number follows from the
log-probabilities transformers itself computes (its own labels loss), for the base and
the fine-tuned model, and comes with a 95% interval."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch

from lorapipe.context import RunContext
from lorapipe.evaluate.stage import run_stage
from lorapipe.manifest import write_manifest
from lorapipe.model.source import resolve_model_path

PAIRS = [("What is 2 plus 2?", "2 plus 2 is 4.", "I don't know."),
         ("Capital of Peru?", "The capital of Peru is Lima.", "Ask someone else."),
         ("Say hi.", "Hi!", "No."),
         ("What is 5 plus 1?", "5 plus 1 is 6.", "5 plus 1 is 7."),
         ("Name a colour.", "Blue.", "Figure it out yourself.")]


def _side(tokenizer: Any, prompt: str, reply: str) -> tuple[list[int], list[int]]:
    messages = [{"role": "user", "content": prompt}]
    start = len(tokenizer.apply_chat_template(messages, add_generation_prompt=True,
                                              tokenize=True, return_dict=False))
    ids = list(tokenizer.apply_chat_template([*messages, {"role": "assistant",
                                                          "content": reply}],
                                             tokenize=True, return_dict=False))
    return ids, [-100] * start + ids[start:]


@pytest.fixture
def pair_run(tmp_path: Path, make_context, save_adapter) -> RunContext:  # noqa: ANN001
    from datasets import Dataset
    from transformers import AutoTokenizer

    ctx = make_context(tmp_path / "run", model={"name_or_path": "tiny-llama",
                                                "quantizer": "none"},
                       evaluate={"evaluators": [{"name": "preference", "beta": 0.2}]})
    tokenizer = AutoTokenizer.from_pretrained(resolve_model_path("tiny-llama"))
    rows: dict[str, list] = {k: [] for k in ("input_ids", "attention_mask", "labels",
                                             "rejected_input_ids", "rejected_labels",
                                             "messages", "source", "kind")}
    for prompt, chosen, rejected in PAIRS:
        ids, labels = _side(tokenizer, prompt, chosen)
        rejected_ids, rejected_labels = _side(tokenizer, prompt, rejected)
        rows["input_ids"].append(ids)
        rows["attention_mask"].append([1] * len(ids))
        rows["labels"].append(labels)
        rows["rejected_input_ids"].append(rejected_ids)
        rows["rejected_labels"].append(rejected_labels)
        rows["messages"].append(json.dumps({"prompt": prompt}))
        rows["source"].append("test")
        rows["kind"].append("preference")
    Dataset.from_dict(rows).save_to_disk(str(ctx.paths.validation_data))
    write_manifest(ctx.paths.data)
    save_adapter(ctx.paths.adapter, targets=["q_proj", "v_proj", "down_proj"])
    return ctx


def _logp(model: Any, ids: list[int], labels: list[int]) -> float:
    """Summed log-probability of the labelled tokens, from transformers' own loss."""
    with torch.no_grad():
        loss = model(input_ids=torch.tensor([ids]), labels=torch.tensor([labels])).loss
    return -float(loss) * sum(label != -100 for label in labels[1:])


def test_the_preference_evaluator_reports_what_transformers_computes(pair_run) -> None:
    from datasets import load_from_disk
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    report = run_stage(pair_run)["preference"]
    data = load_from_disk(str(pair_run.paths.validation_data))
    base = AutoModelForCausalLM.from_pretrained(resolve_model_path("tiny-llama"),
                                                dtype=torch.float32)
    scores = {}
    for name, model in (("base", base), ("tuned", None)):
        model = model or PeftModel.from_pretrained(base, pair_run.paths.adapter)
        scores[name] = [(_logp(model, r["input_ids"], r["labels"]),
                         _logp(model, r["rejected_input_ids"], r["rejected_labels"]))
                        for r in data]
    margins = [0.2 * ((tc - bc) - (tr - br))
               for (bc, br), (tc, tr) in zip(scores["base"], scores["tuned"], strict=True)]
    tuned = report["finetuned"]
    assert tuned["reward_accuracy"] == pytest.approx(sum(m > 0 for m in margins) / 5)
    assert tuned["reward_margin"] == pytest.approx(sum(margins) / 5, abs=1e-4)
    for name, key in (("base", "base"), ("tuned", "finetuned")):
        chosen = [c for c, _ in scores[name]]
        assert report[key]["logp_chosen"] == pytest.approx(sum(chosen) / 5, abs=1e-3)
    assert report["base"]["reward_accuracy"] is None
    low, high = report["ci95"]["finetuned"]["reward_accuracy"]
    assert low <= tuned["reward_accuracy"] <= high
    assert len(report["ci95"]["change"]["preference_accuracy"]) == 2
