"""Perplexity against a hand computation, the evaluate stage, and batched generation."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from datasets import Dataset, load_from_disk
from peft import PeftModel
from pydantic import ValidationError
from transformers import AutoModelForCausalLM, AutoTokenizer

from lorapipe.components import Evaluator
from lorapipe.config import ComponentRef
from lorapipe.errors import ConfigError, UserError
from lorapipe.evaluate import generate, run_stage, token_nll
from lorapipe.manifest import write_manifest
from lorapipe.model.source import resolve_model_path
from lorapipe.plan import build_component
from lorapipe.registry import get_registry


def _base():
    return AutoModelForCausalLM.from_pretrained(resolve_model_path("tiny-llama"),
                                                dtype=torch.float32)


def _by_hand(model, dataset) -> dict[str, float]:
    """exp(mean NLL) per part, one unpadded sequence at a time with log_softmax."""
    sums = {"response": [], "prompt": [], "all": []}
    with torch.no_grad():
        for row in dataset:
            ids = torch.tensor([row["input_ids"]])
            logp = torch.log_softmax(model(ids).logits[0].double(), -1)
            for t in range(1, len(row["input_ids"])):
                nll = -float(logp[t - 1, row["input_ids"][t]])
                sums["response" if row["labels"][t] != -100 else "prompt"].append(nll)
                sums["all"].append(nll)
    return {part: math.exp(sum(v) / len(v)) if v else None for part, v in sums.items()}


def test_token_nll_matches_hand_computation(eval_run) -> None:
    dataset = load_from_disk(str(eval_run.paths.validation_data))
    model = _base()
    # batch of 2 over 3 sequences of different lengths: padding is exercised
    got = token_nll(model, dataset, batch_size=2, pad_id=2044).perplexity()
    expected = _by_hand(model, dataset)
    assert got == pytest.approx(expected, rel=1e-5)


def test_evaluate_stage_reports_base_and_finetuned(eval_run) -> None:
    summary = run_stage(eval_run)
    report = json.loads(eval_run.paths.eval_report.read_text())
    assert summary == report
    result = report["perplexity"]
    dataset = load_from_disk(str(eval_run.paths.validation_data))
    base = _base()
    assert result["base"] == pytest.approx(_by_hand(base, dataset), rel=1e-4)
    tuned = PeftModel.from_pretrained(base, eval_run.paths.adapter)
    assert result["finetuned"] == pytest.approx(_by_hand(tuned, dataset), rel=1e-4)
    for part in ("response", "prompt", "all"):
        assert result["change"][part] == pytest.approx(
            result["finetuned"][part] - result["base"][part])
    assert result["base"] != result["finetuned"]
    n_response = sum(sum(1 for x in row[1:] if x != -100) for row in dataset["labels"])
    assert result["tokens"]["response"] == n_response
    memory = [json.loads(line) for line in eval_run.paths.metrics.read_text().splitlines()]
    assert memory[-1]["event"] == "memory" and memory[-1]["stage"] == "evaluation"
    assert memory[-1]["rss_bytes"] > 0


def test_empty_validation_set_is_a_user_error(tmp_path: Path, make_context) -> None:
    ctx = make_context(tmp_path / "run")
    Dataset.from_dict({"input_ids": [], "attention_mask": [], "labels": [], "messages": [],
                       "source": []}).save_to_disk(str(ctx.paths.validation_data))
    write_manifest(ctx.paths.data)
    with pytest.raises(UserError, match="validation set is empty.*data.validation"):
        run_stage(ctx)


def test_batched_generation_matches_one_at_a_time(eval_run) -> None:
    tokenizer = AutoTokenizer.from_pretrained(resolve_model_path("tiny-llama"))
    template = eval_run.plan.template
    conversations = json.loads(json.dumps(
        [json.loads(m) for m in load_from_disk(str(eval_run.paths.validation_data))["messages"]]
    ))
    model = _base()
    replies = generate(model, tokenizer, template, conversations, max_new_tokens=6,
                       pad_token_id=tokenizer.pad_token_id, batch_size=3)
    assert len(replies) == len(conversations)
    for conversation, reply in zip(conversations, replies, strict=True):
        prompt = template.generation_prompt(conversation[:-1], tokenizer)
        out = model.generate(torch.tensor([prompt]), do_sample=False, max_new_tokens=6,
                             pad_token_id=tokenizer.pad_token_id)
        assert reply == tokenizer.decode(out[0, len(prompt):], skip_special_tokens=True)


def test_evaluation_verifies_the_validation_split_it_reads_not_the_rest(eval_run) -> None:
    """Only the validation split is hashed before evaluation (a damaged training split is
    no concern of it); damage there is refused, naming the file."""
    paths = eval_run.paths
    (paths.train_data).mkdir(parents=True)
    train_file = paths.train_data / "data-00000-of-00001.arrow"
    train_file.write_bytes(b"training rows")
    write_manifest(paths.data)
    train_file.write_bytes(b"damaged")
    assert "perplexity" in run_stage(eval_run)

    arrow = next(paths.validation_data.glob("*.arrow"))
    arrow.write_bytes(arrow.read_bytes()[:-8])
    with pytest.raises(UserError, match=rf"{arrow.name} does not match its checksum.*prepare"):
        run_stage(eval_run)


def test_perplexity_has_paired_bootstrap_intervals(eval_run) -> None:
    """Per-sequence sums add up to the totals; each 95% interval holds its point estimate
    and matches a plain re-computation of the bootstrap from those sums."""
    import numpy as np

    from lorapipe.evaluate.nll import PARTS, bootstrap_ci

    dataset = load_from_disk(str(eval_run.paths.validation_data))
    base, tuned = _base(), PeftModel.from_pretrained(_base(), eval_run.paths.adapter)
    totals = {name: token_nll(model, dataset, batch_size=2, pad_id=2044)
              for name, model in (("base", base), ("finetuned", tuned))}
    for t in totals.values():
        for part in PARTS:
            assert t.per_sample[part][:, 0].sum() == pytest.approx(t.nll[part], rel=1e-9)
            assert t.per_sample[part][:, 1].sum() == t.tokens[part]
    ci = bootstrap_ci(totals["base"], totals["finetuned"], resamples=400, seed=3)
    point = {name: t.perplexity()["response"] for name, t in totals.items()}
    for name in ("base", "finetuned"):
        low, high = ci[name]["response"]
        assert low <= point[name] <= high
    draws = np.random.default_rng(3).integers(0, len(dataset), size=(400, len(dataset)))
    b, f = (totals[n].per_sample["response"][draws] for n in ("base", "finetuned"))
    change = np.exp(f[..., 0].sum(1) / f[..., 1].sum(1)) - np.exp(b[..., 0].sum(1)
                                                                 / b[..., 1].sum(1))
    assert ci["change"]["response"] == pytest.approx(list(np.percentile(change, [2.5, 97.5])))

    report = run_stage(eval_run)["perplexity"]
    assert report["sequences"] == len(dataset)
    assert set(report["ci95"]) == {"base", "finetuned", "change"}


def test_evaluators_score_the_test_split_when_there_is_one(eval_run) -> None:
    """With data/test (data.test), evaluators score it, not the validation set that
    picked the best checkpoint, and the report says which."""
    paths = eval_run.paths
    assert run_stage(eval_run)["perplexity"]["split"] == "validation"
    validation = load_from_disk(str(paths.validation_data))
    validation.select([0, 2]).save_to_disk(str(paths.test_data))
    write_manifest(paths.data)
    report = run_stage(eval_run)["perplexity"]
    assert report["split"] == "test" and report["sequences"] == 2
    expected = _by_hand(_base(), validation.select([0, 2]))
    assert report["base"] == pytest.approx(expected, rel=1e-4)


def test_the_forgetting_check_scores_general_text_and_warns_or_fails(
        eval_run, tmp_path: Path) -> None:
    """General text scored by base and fine-tuned model as whole documents; an adapter
    that wrecks the model (large random A and B) raises perplexity there beyond the
    threshold: reported as forgetting, or an error naming the numbers with on_forgetting:
    fail. Perplexities match a hand computation."""
    from lorapipe.components import EvalContext
    from lorapipe.plugins.evaluators.perplexity import PerplexityEvaluator, PerplexityOptions

    general = tmp_path / "general.jsonl"
    documents = ["The river runs through the old town and under seven bridges.",
                 "Photosynthesis turns light, water and carbon dioxide into sugar."]
    general.write_text("".join(json.dumps({"text": d}) + "\n" for d in documents))
    tokenizer = AutoTokenizer.from_pretrained(resolve_model_path("tiny-llama"))
    model = PeftModel.from_pretrained(_base(), eval_run.paths.adapter)
    generator = torch.Generator().manual_seed(7)  # the fixture's lora_A depends on test order
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_" in name:
                param.copy_(torch.randn(param.shape, generator=generator) * 3.0)
    context = EvalContext(model=model, tokenizer=tokenizer, template=eval_run.plan.template,
                          dataset=load_from_disk(str(eval_run.paths.validation_data)),
                          pad_token_id=2044)
    options = {"general": {"wiki": {"path": str(general)}}}
    report = PerplexityEvaluator(PerplexityOptions(**options)).evaluate(context)
    result = report["general"]["wiki"]
    ids = tokenizer(documents)["input_ids"]
    rows = Dataset.from_dict({"input_ids": ids, "labels": ids})
    assert result["base"] == pytest.approx(_by_hand(_base(), rows)["all"], rel=1e-4)
    assert result["finetuned"] == pytest.approx(_by_hand(model, rows)["all"], rel=1e-4)
    assert result["increase"] > 0.05 and result["forgetting"] is True
    assert report["forgetting"] == ["wiki"] and result["documents"] == 2

    failing = PerplexityOptions(**options, on_forgetting="fail")
    with pytest.raises(UserError, match=r"forgetting: perplexity on general text rose more "
                                        r"than 5% \(wiki: "):
        PerplexityEvaluator(failing).evaluate(context)
    lenient = PerplexityOptions(**options, max_general_increase=result["increase"] * 2)
    assert PerplexityEvaluator(lenient).evaluate(context)["forgetting"] == []

    # the same documents from any loader (here 🤗 datasets' save_to_disk), other records
    # counted by why they were not used
    saved = tmp_path / "saved"
    Dataset.from_list([{"body": documents[0]}, {"body": ""}, {"body": None},
                       {"body": documents[1]}]).save_to_disk(saved)
    # the plan builds the loader a Part option names, and names its field in errors
    from_loader = {"general": {"wiki": {"loader": {"name": "hf", "dataset": str(saved)},
                                        "field": "body"}}}

    def built(options: dict) -> Evaluator:
        return build_component(get_registry(), "evaluator", "evaluate.evaluators.0",
                               ComponentRef(name="perplexity", **options), Evaluator)

    evaluator = built(from_loader)
    part = evaluator.parts["general.wiki.loader"]
    assert part.field == "evaluate.evaluators.0.general.wiki.loader"
    loaded = evaluator.evaluate(context)
    assert loaded["general"]["wiki"]["finetuned"] == pytest.approx(result["finetuned"])
    assert loaded["general"]["wiki"]["dropped"] == {"empty": 1, "no_body": 1}
    with pytest.raises(ConfigError, match=r"evaluate.evaluators.0.general.x.loader.name: "
                                          r"unknown loader 'hff'"):
        built({"general": {"x": {"loader": {"name": "hff", "dataset": "d"}}}})
    with pytest.raises(ValidationError, match="give either path"):
        PerplexityOptions(general={"x": {"field": "text"}})

    broken = tmp_path / "broken.jsonl"
    broken.write_text('{"text": "fine"}\n{"txt": "no text field"}\n')
    with pytest.raises(UserError, match=rf"{broken}:2: expected a JSON object"):
        PerplexityEvaluator(PerplexityOptions(
            general={"broken": {"path": str(broken)}})).evaluate(context)
