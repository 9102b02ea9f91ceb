"""Every chat template in llama.cpp's collection trains exactly the reference's tokens on
multi-turn data with and without a system prompt, or is refused with a reason. The
reference (``real_templates.py``) ends each reply on its family's stop tokens, on a real
vocabulary with the family's markers, never by comparing renderings as lorapipe does."""

from __future__ import annotations

import copy
import json
import shutil
from pathlib import Path
from typing import Any

import pytest
import yaml
from llama_cpp_material import real_tokenizer
from real_templates import CONVERSATIONS, TEMPLATES, check
from tool_templates import FAMILIES as REFERENCE_FAMILIES

from lorapipe.context import RunContext
from lorapipe.model.source import resolve_model_path
from lorapipe.pipeline import run_one_stage
from lorapipe.plan import load_plan

PATHS = sorted(TEMPLATES.glob("*.jinja"))
# The families lorapipe supports end to end: their own templates must train every variant
# they can render (Gemma 2's refuses a system message itself).
FAMILIES = {
    "meta-llama-Llama-3.1-8B-Instruct": set(CONVERSATIONS),
    "meta-llama-Llama-3.2-3B-Instruct": set(CONVERSATIONS),
    "mistralai-Mistral-Nemo-Instruct-2407": set(CONVERSATIONS),
    "Qwen-Qwen2.5-7B-Instruct": set(CONVERSATIONS),
    "Qwen-Qwen3-0.6B": set(CONVERSATIONS),
    "google-gemma-2-2b-it": {"single", "multi"},
    "microsoft-Phi-3.5-mini-instruct": set(CONVERSATIONS),
    "deepseek-ai-DeepSeek-R1-Distill-Llama-8B": set(CONVERSATIONS),
}


def test_the_collection_is_there() -> None:
    stems = {p.stem for p in PATHS}
    # the reference knows every template's family: its vocabulary and stop tokens
    assert len(PATHS) >= 60 and set(FAMILIES) <= stems and stems == set(REFERENCE_FAMILIES)


@pytest.mark.parametrize("path", PATHS, ids=lambda p: p.stem)
def test_template_trains_the_reference_spans_or_is_refused(path: Path) -> None:
    outcomes = {name: check(path, name) for name in CONVERSATIONS}
    for name, outcome in outcomes.items():
        assert outcome == "trained correctly" or outcome.startswith("refused: "), (name, outcome)
    if path.stem in FAMILIES:
        trained = {name for name, outcome in outcomes.items() if outcome == "trained correctly"}
        assert trained == FAMILIES[path.stem], outcomes


# Real tokenizers as llama_cpp_material builds them, without the family's stop tokens
# beside them (no generation_config.json: lorapipe knows only the EOS).
BASES = [("phi3", "microsoft-Phi-3.5-mini-instruct"),
         ("llama3", "meta-llama-Llama-3.1-8B-Instruct"),
         ("qwen2", "Qwen-Qwen2.5-7B-Instruct"),
         ("gemma", "google-gemma-2-2b-it")]


@pytest.mark.parametrize(("name", "template"), BASES, ids=lambda x: x)
def test_a_reply_is_trained_up_to_its_stop_token_never_into_the_next_turn(
        name: str, template: str) -> None:
    """On the family's real tokenizer, multi-turn, lorapipe left to find the stop tokens
    itself: each reply that another turn follows is trained up to the first of the
    family's stop tokens after it (its generation_config.json's eos_token_id, as the
    reference's table lists them), and not one token of the next turn (Phi-3.5 trained
    "<|user|>" after every non-final reply); the last one at least that far."""
    from transformers import AutoTokenizer

    from lorapipe.authoring.masking import trained_text
    from lorapipe.plugins.templates.tokenizer import TokenizerTemplate

    tokenizer = AutoTokenizer.from_pretrained(real_tokenizer(name))
    tokenizer.chat_template = (TEMPLATES / f"{template}.jinja").read_text(encoding="utf-8")
    messages = CONVERSATIONS["multi"]
    full = tokenizer.apply_chat_template(messages, tokenize=False)
    replies = [m["content"] for m in messages if m["role"] == "assistant"]
    expected = []
    for reply in replies:
        end = full.index(reply) + len(reply)
        stop = min((full.index(s, end), s) for s in REFERENCE_FAMILIES[template].stops
                   if s in full[end:])
        expected.append(reply + full[end:stop[0] + len(stop[1])])
    trained = trained_text(TokenizerTemplate().encode(messages, tokenizer), tokenizer)
    assert len(trained) == len(replies)
    assert trained[:-1] == expected[:-1]
    assert trained[-1].startswith(expected[-1])


def test_qwen3_think_scaffolding_is_not_trained(tokenizer: Any) -> None:
    from lorapipe.authoring.masking import trained_text
    from lorapipe.plugins.templates.tokenizer import TokenizerTemplate

    qwen3 = copy.deepcopy(tokenizer)
    qwen3.add_special_tokens({"additional_special_tokens": ["<|im_start|>", "<|im_end|>"]})
    qwen3.chat_template = (TEMPLATES / "Qwen-Qwen3-0.6B.jinja").read_text(encoding="utf-8")
    messages = CONVERSATIONS["single"]
    text = qwen3.apply_chat_template(messages, tokenize=False)
    assert "<think>\n\n</think>\n\n" in text  # the scaffolding is rendered ...
    trained = trained_text(TokenizerTemplate().encode(messages, qwen3), qwen3)
    assert trained == [messages[1]["content"] + "<|im_end|>"]  # ... and not trained ...
    asked = TokenizerTemplate(TokenizerTemplate.Options(train_scaffolding=True))
    trained = trained_text(asked.encode(messages, qwen3), qwen3)
    assert trained == ["<think>\n\n</think>\n\n" + messages[1]["content"] + "<|im_end|>"]


def test_records_a_template_cannot_render_are_dropped_with_their_line(
        tmp_path: Path, lorapipe_cache: Path) -> None:
    """Gemma 2's template refuses a system message: those records are counted and listed
    with file:line, the rest are prepared (one such record never refuses the dataset)."""
    model = shutil.copytree(resolve_model_path("tiny-llama"), tmp_path / "gemma-templated")
    config_path = model / "tokenizer_config.json"
    tokenizer_config = json.loads(config_path.read_text())
    tokenizer_config["chat_template"] = (TEMPLATES / "google-gemma-2-2b-it.jinja").read_text()
    config_path.write_text(json.dumps(tokenizer_config))
    data = tmp_path / "train.jsonl"
    rows = [[{"role": "user", "content": f"Question {n}?"},
             {"role": "assistant", "content": f"Answer {n}."}] for n in range(20)]
    rows[6] = [{"role": "system", "content": "Be brief."}, *rows[6]]
    data.write_text("".join(json.dumps({"messages": r}) + "\n" for r in rows))
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump({
        "model": {"name_or_path": str(model)}, "data": {"loader": {"name": "jsonl",
                                                                  "path": str(data)}},
        "output_dir": str(tmp_path / "run")}))
    summary = run_one_stage(RunContext(load_plan(path)), "prepare")
    assert summary["records_read"] == 20 and summary["kept"] == 19
    dropped = [json.loads(line) for line in
               (tmp_path / "run" / "data" / "dropped.jsonl").read_text().splitlines()]
    assert [(d["location"], d["reason"]) for d in dropped] == [(f"{data}:7", "unrenderable")]
    assert "System role not supported" in dropped[0]["detail"]
