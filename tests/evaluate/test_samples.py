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


TOOLS = [{"type": "function", "function": {
    "name": "get_weather", "description": "Temperature in a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}}]


def test_a_tool_conversation_is_answered_with_its_tool_definitions() -> None:
    """The samples' replies to a tool conversation are generated from the prompt the
    model trained on: apply_chat_template with the record's tools (the agent template
    writes them); without them the prompt would be another."""
    from pathlib import Path

    import torch

    from lorapipe.plugins.templates.tokenizer import TokenizerTemplate

    agent = Path(__file__).resolve().parents[2] / "configs" / "templates" / \
        "tiny-llama-agent.jinja"
    tokenizer = AutoTokenizer.from_pretrained(resolve_model_path("tiny-llama"))
    tokenizer.chat_template = agent.read_text(encoding="utf-8")
    model = AutoModelForCausalLM.from_pretrained(resolve_model_path("tiny-llama"))
    conversation = [{"role": "user", "content": "How warm is it in Lima?"},
                    {"role": "assistant", "content": "Let me check."}]
    pad = pad_token_id(tokenizer)
    [ours] = generate(model, tokenizer, TokenizerTemplate(), [conversation], tools=[TOOLS],
                      max_new_tokens=8, pad_token_id=pad)
    ids = tokenizer.apply_chat_template(conversation[:1], tools=TOOLS, tokenize=True,
                                        add_generation_prompt=True, return_dict=False)
    with torch.no_grad():
        out = model.generate(torch.tensor([list(ids)]), max_new_tokens=8, do_sample=False,
                             pad_token_id=pad)
    assert ours == tokenizer.decode(out[0, len(ids):], skip_special_tokens=True)
    assert TokenizerTemplate().generation_prompt(conversation[:1], tokenizer) != list(ids)


def test_the_context_gives_each_conversations_tools_in_order() -> None:
    from datasets import Dataset

    from lorapipe.eval_context import EvalContext

    rows = {"messages": [json.dumps([{"role": "user", "content": "a"}]), json.dumps({"text": "t"}),
                         json.dumps([{"role": "user", "content": "b"}])],
            "tools": [json.dumps(TOOLS), "null", "null"], "kind": ["chat", "text", "chat"]}
    context = EvalContext(model=None, tokenizer=None, template=None,
                          dataset=Dataset.from_dict(rows), pad_token_id=0)
    assert [c[0]["content"] for c in context.conversations()] == ["a", "b"]
    assert context.conversation_tools() == [TOOLS, None]
