"""eval/samples.jsonl: a few held-out prompts with both models' greedy replies."""

from __future__ import annotations

import json

from datasets import load_from_disk
from peft import PeftModel
from transformers import AutoModelForCausalLM, AutoTokenizer

from lorapipe.evaluate import generate, run_stage
from lorapipe.evaluate.samples import COUNT, MAX_NEW_TOKENS
from lorapipe.model.pretrained import pad_token_id
from lorapipe.model.source import resolve_model_path


def test_the_evaluate_stage_keeps_replies_of_base_and_finetuned(eval_run) -> None:  # noqa: ANN001
    run_stage(eval_run)
    samples = [json.loads(line) for line in eval_run.paths.eval_samples.read_text().splitlines()]
    conversations = [json.loads(m) for m in
                     load_from_disk(str(eval_run.paths.validation_data))["messages"]][:COUNT]
    assert len(samples) == len(conversations) == 3
    for sample, conversation in zip(samples, conversations, strict=True):
        assert sample["prompt"] == conversation[:-1]
        assert sample["reference"] == conversation[-1]["content"]

    # the same greedy replies lorapipe's generate gives each model, adapter off and on
    tokenizer = AutoTokenizer.from_pretrained(resolve_model_path("tiny-llama"))
    base = AutoModelForCausalLM.from_pretrained(resolve_model_path("tiny-llama"))
    tuned = PeftModel.from_pretrained(base, eval_run.paths.adapter)
    settings = {"max_new_tokens": MAX_NEW_TOKENS, "pad_token_id": pad_token_id(tokenizer)}
    with tuned.disable_adapter():
        expected_base = generate(tuned, tokenizer, eval_run.plan.template, conversations,
                                 **settings)
    expected_tuned = generate(tuned, tokenizer, eval_run.plan.template, conversations,
                              **settings)
    assert [s["base"] for s in samples] == expected_base
    assert [s["finetuned"] for s in samples] == expected_tuned
    assert expected_base != expected_tuned
