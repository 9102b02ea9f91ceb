"""exact_match, rouge_l and bleu: scoring, and a real evaluate run on tiny-llama."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import sacrebleu
import torch
import yaml
from lorapipe_textmetrics.metrics import Bleu, ExactMatch, RougeL
from transformers import AutoModelForCausalLM, AutoTokenizer

from lorapipe.context import RunContext
from lorapipe.model.source import resolve_model_path
from lorapipe.pipeline import run_one_stage
from lorapipe.plan import load_plan
from lorapipe.registry import get_registry

QUICKSTART = Path(__file__).resolve().parents[3] / "configs" / "data" / "quickstart.jsonl"
METRICS = ("exact_match", "rouge_l", "bleu")


def test_sample_scores() -> None:
    refs = ["The capital of France is Paris.", "Seven."]
    preds = ["  The capital of  France is Paris.\n", "Eight."]
    assert ExactMatch().sample_scores(preds, refs) == [1.0, 0.0]
    rouge = RougeL().sample_scores(["the capital is Paris", "x"], refs)
    assert rouge[0] == pytest.approx(2 * (4 / 4) * (4 / 6) / (4 / 4 + 4 / 6))  # P=1, R=4/6
    assert rouge[1] == 0.0
    bleu = Bleu()
    assert bleu.sample_scores(refs, refs) == pytest.approx([100.0, 100.0])
    assert bleu.aggregate(preds, refs, []) == sacrebleu.corpus_bleu(preds, [refs]).score


@pytest.fixture(scope="module")
def evaluated(tmp_path_factory: pytest.TempPathFactory, lorapipe_cache: Path) -> Path:
    tmp = tmp_path_factory.mktemp("textmetrics")
    out = tmp / "run"
    config = {
        "model": {"name_or_path": "tiny-llama", "quantizer": "none"},
        "adapter": {"r": 4, "alpha": 8, "dropout": 0.0},
        "data": {"loader": {"name": "jsonl", "path": str(QUICKSTART)}, "max_length": 128,
                 "validation": {"count": 6}},
        "train": {"max_steps": 2, "micro_batch_size": 4, "gradient_accumulation_steps": 1,
                  "gradient_checkpointing": False, "learning_rate": 5e-3, "save_steps": 2},
        "evaluate": {"evaluators": [{"name": m, "max_new_tokens": 8, "batch_size": 4}
                                    for m in METRICS]},
        "output_dir": str(out),
    }
    path = tmp / "run.yaml"
    path.write_text(yaml.safe_dump(config))
    registry = get_registry()
    ctx = RunContext(load_plan(path, registry=registry))
    for stage in ("prepare", "train", "evaluate"):
        run_one_stage(ctx, stage)
    return out


def rows(out: Path, metric: str) -> list[dict]:
    path = out / "eval" / metric / "predictions.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_report_has_base_finetuned_and_change(evaluated: Path) -> None:
    report = json.loads((evaluated / "eval" / "report.json").read_text())
    assert set(report) == set(METRICS)
    for metric in METRICS:
        entry = report[metric]
        assert entry["samples"] == 6
        assert entry["change"][metric] == pytest.approx(
            entry["finetuned"][metric] - entry["base"][metric])
        predictions = rows(evaluated, metric)
        assert len(predictions) == 6
        # the aggregate is recomputable from the written predictions
        refs = [r["reference"] for r in predictions]
        for side in ("base", "finetuned"):
            replies = [r[side] for r in predictions]
            if metric == "bleu":
                expected = sacrebleu.corpus_bleu(replies, [refs]).score
            else:
                expected = sum(r[f"{side}_score"] for r in predictions) / 6
            assert entry[side][metric] == pytest.approx(expected)
            low, high = entry["ci95"][side][metric]
            assert low <= entry[side][metric] + 1e-9 and entry[side][metric] <= high + 1e-9
        low, high = entry["ci95"]["change"][metric]
        assert low - 1e-9 <= entry["change"][metric] <= high + 1e-9


def test_metrics_share_one_generation_pass_and_identical_prompts(evaluated: Path) -> None:
    first = rows(evaluated, "exact_match")
    for metric in METRICS[1:]:
        assert [(r["prompt"], r["base"], r["finetuned"]) for r in rows(evaluated, metric)] == [
            (r["prompt"], r["base"], r["finetuned"]) for r in first]
    assert any(r["base"] != r["finetuned"] for r in first)  # the adapter changed something


def test_base_replies_are_plain_greedy_generation(evaluated: Path) -> None:
    """transformers' own greedy decoding of the base model gives the recorded base reply."""
    path = resolve_model_path("tiny-llama")
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(evaluated / "data" / "tokenizer")
    row = rows(evaluated, "bleu")[0]
    ids = tokenizer.apply_chat_template(row["prompt"], add_generation_prompt=True,
                                        return_tensors="pt", return_dict=True)
    out = model.generate(**ids, do_sample=False, max_new_tokens=8,
                         pad_token_id=tokenizer.pad_token_id)
    reply = tokenizer.decode(out[0, ids["input_ids"].shape[1]:], skip_special_tokens=True)
    assert reply == row["base"]
