"""Preference pairs become the samples DPO-style objectives train on: the three shapes
people have give the same pair; each side is the template's own rendering of prompt +
reply (``apply_chat_template`` judges), the reply trained, the prompt alike on both; bad
pairs are counted with their reason and ``file:line``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from datasets import load_from_disk
from llama_cpp_material import real_tokenizer
from prepare_helpers import read_report, write_jsonl

from lorapipe.authoring.masking import trained_text
from lorapipe.config import validate_config
from lorapipe.data.pairs import encode_pairs
from lorapipe.data.samples import _Chats
from lorapipe.data.schemas import to_record
from lorapipe.plugins.templates.tokenizer import TokenizerTemplate

TEMPLATES = Path(__file__).resolve().parents[1] / "fixtures" / "chat_templates"
SYSTEM = {"role": "system", "content": "Be brief."}
USER = {"role": "user", "content": "What is the capital of Peru?"}
CHOSEN = "The capital of Peru is Lima."
REJECTED = "Ask someone else."


def _assistant(text: str) -> dict[str, str]:
    return {"role": "assistant", "content": text}


SHAPES = {
    "text": {"prompt": USER["content"], "chosen": CHOSEN, "rejected": REJECTED},
    "messages": {"prompt": [USER], "chosen": [_assistant(CHOSEN)],
                 "rejected": [_assistant(REJECTED)]},
    "conversations": {"chosen": [USER, _assistant(CHOSEN)],
                      "rejected": [USER, _assistant(REJECTED)]},
}


def test_the_three_shapes_prepare_the_same_pair(tmp_path: Path, prepare: Any) -> None:
    rows = [dict(shape, id=i) for i, shape in enumerate(SHAPES.values())]
    data = write_jsonl(tmp_path / "pairs.jsonl", rows * 4)
    _, out = prepare(data, dedupe=False, validation={"count": 1})
    prepared = list(load_from_disk(str(out / "data" / "train")))
    assert {r["kind"] for r in prepared} == {"preference"}
    sides = {(tuple(r["input_ids"]), tuple(r["rejected_input_ids"])) for r in prepared}
    assert len(sides) == 1


@pytest.mark.parametrize(("name", "template"), [
    ("qwen2", "Qwen-Qwen2.5-7B-Instruct"), ("llama3", "meta-llama-Llama-3.1-8B-Instruct"),
    ("gemma", "google-gemma-2-2b-it")])
def test_each_side_is_the_templates_rendering_with_only_the_reply_trained(
        name: str, template: str, tmp_path: Path) -> None:
    """On the family's real tokenizer and template, a two-exchange prompt: each side's
    tokens are exactly ``apply_chat_template`` of prompt + reply; only the reply (and its
    end of turn) is trained, the earlier assistant turn is context; the prompt's tokens
    are the same on both sides."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(real_tokenizer(name))
    tokenizer.chat_template = (TEMPLATES / f"{template}.jinja").read_text(encoding="utf-8")
    prompt = [{"role": "user", "content": "Hi there."}, _assistant("Hello! How can I help?"),
              USER]
    record = to_record({"prompt": prompt, "chosen": CHOSEN, "rejected": REJECTED}, "auto", {})
    data = validate_config({"model": {"name_or_path": "x"},
                            "data": {"loader": {"name": "jsonl", "path": "x"}},
                            "output_dir": str(tmp_path)}).data
    chats = _Chats(TokenizerTemplate(), tokenizer, data)
    [sample] = encode_pairs(chats, [record])
    for encoded, reply in ((sample.encoded, CHOSEN), (sample.rejected, REJECTED)):
        expected = tokenizer.apply_chat_template([*prompt, _assistant(reply)], tokenize=True,
                                                 return_dict=False)
        assert encoded.input_ids == list(expected)
        [trained] = trained_text(encoded, tokenizer)
        assert trained.startswith(reply) and "Hello!" not in trained
    start = sample.encoded.trainable.index(True)
    assert sample.rejected.trainable.index(True) == start
    assert sample.encoded.input_ids[:start] == sample.rejected.input_ids[:start]


def test_bad_pairs_are_dropped_with_reason_and_line(tmp_path: Path, prepare: Any) -> None:
    good = [{"prompt": f"Question {n}?", "chosen": f"Answer {n}.", "rejected": "No."}
            for n in range(6)]
    long_prompt = [{"role": "user", "content": "word " * 60}, _assistant("ok " * 5),
                   {"role": "user", "content": "Short?"}]
    bad = [
        ({"prompt": "Same?", "chosen": "Yes.", "rejected": "Yes."}, "identical_pair"),
        ({"prompt": "One side?", "chosen": "Only this."}, "missing_side"),
        ({"chosen": [USER, _assistant("A.")], "rejected": [SYSTEM, _assistant("B.")]},
         "missing_prompt"),
        ({"prompt": "Who?", "chosen": [USER], "rejected": "B."}, "wrong_type"),
        ({"prompt": "Long?", "chosen": "x " * 200, "rejected": "y."}, "too_long"),
        ({"prompt": long_prompt, "chosen": "Fine.", "rejected": "Bad."}, "too_long"),
    ]
    data = write_jsonl(tmp_path / "pairs.jsonl", good + [row for row, _ in bad])
    _, out = prepare(data, max_length=64, validation={"count": 1})
    dropped = [json.loads(line) for line in
               (out / "data" / "dropped.jsonl").read_text().splitlines()]
    assert [(d["location"], d["reason"]) for d in dropped] == [
        (f"{data}:{len(good) + i}", reason) for i, (_, reason) in enumerate(bad, start=1)]
    report = read_report(out)
    assert report["records_read"] == len(good) + len(bad) and report["kept"] == len(good)


def test_truncate_history_drops_the_prompts_first_exchange_on_both_sides(
        tmp_path: Path, prepare: Any) -> None:
    prompt = [SYSTEM, {"role": "user", "content": "word " * 40}, _assistant("Sure."), USER]
    data = write_jsonl(tmp_path / "pairs.jsonl",
                       [{"prompt": prompt, "chosen": CHOSEN, "rejected": REJECTED, "n": n}
                        for n in range(4)])
    _, out = prepare(data, max_length=64, length_strategy="truncate_history", dedupe=False,
                     validation={"count": 1})
    rows = list(load_from_disk(str(out / "data" / "train")))
    body = json.loads(rows[0]["messages"])
    assert body["prompt"] == [SYSTEM, USER] and read_report(out)["truncated"] == 4
    assert all(len(r["input_ids"]) <= 64 and len(r["rejected_input_ids"]) <= 64 for r in rows)


def test_truncate_prompt_keeps_the_prompts_end_on_both_sides(tmp_path: Path) -> None:
    """TRL's keep_end on Qwen2.5's real template: the earliest exchange goes, then the
    start of the user turn; each side is still apply_chat_template's rendering of the
    cut prompt + its whole reply, the prompt's end and both replies intact."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(real_tokenizer("qwen2"))
    tokenizer.chat_template = (TEMPLATES / "Qwen-Qwen2.5-7B-Instruct.jinja").read_text(
        encoding="utf-8")
    question = " ".join(f"fact{i}." for i in range(60)) + " What is the capital of Peru?"
    prompt = [SYSTEM, {"role": "user", "content": "word " * 40}, _assistant("Sure."),
              {"role": "user", "content": question}]
    record = to_record({"prompt": prompt, "chosen": CHOSEN, "rejected": REJECTED}, "auto", {})
    data = validate_config({"model": {"name_or_path": "x"},
                            "data": {"loader": {"name": "jsonl", "path": "x"},
                                     "max_length": 96, "length_strategy": "truncate_prompt"},
                            "output_dir": str(tmp_path)}).data
    [sample] = encode_pairs(_Chats(TokenizerTemplate(), tokenizer, data), [record])
    system, user = sample.record.messages
    assert system == SYSTEM and sample.truncated
    assert question.endswith(user["content"].strip()) and len(user["content"]) < len(question)
    for encoded, reply in ((sample.encoded, CHOSEN), (sample.rejected, REJECTED)):
        assert len(encoded.input_ids) <= 96
        expected = tokenizer.apply_chat_template([system, user, _assistant(reply)],
                                                 tokenize=True, return_dict=False)
        assert encoded.input_ids == list(expected)
        [trained] = trained_text(encoded, tokenizer)
        assert trained.startswith(reply)
    start = sample.encoded.trainable.index(True)
    assert sample.encoded.input_ids[:start] == sample.rejected.input_ids[:start]


def test_a_pair_of_reasoned_replies_trains_each_sides_reasoning(tmp_path: Path) -> None:
    """Reasoner data on Qwen3's real template: each side is apply_chat_template's
    rendering with its own reasoning, and the trained reply starts at the think block."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(real_tokenizer("qwen2"))
    tokenizer.chat_template = (TEMPLATES / "Qwen-Qwen3-0.6B.jinja").read_text(
        encoding="utf-8")
    prompt = [{"role": "user", "content": "What is 2 plus 2?"}]
    chosen = {"role": "assistant", "content": "4.", "reasoning_content": "2 + 2 = 4."}
    rejected = {"role": "assistant", "content": "5.", "reasoning_content": "2 + 2 is 5."}
    record = to_record({"prompt": prompt, "chosen": [chosen], "rejected": [rejected]},
                       "auto", {})
    data = validate_config({"model": {"name_or_path": "x"},
                            "data": {"loader": {"name": "jsonl", "path": "x"}},
                            "output_dir": str(tmp_path)}).data
    [sample] = encode_pairs(_Chats(TokenizerTemplate(), tokenizer, data), [record])
    for encoded, reply in ((sample.encoded, chosen), (sample.rejected, rejected)):
        expected = tokenizer.apply_chat_template([*prompt, reply], tokenize=True,
                                                 return_dict=False)
        assert encoded.input_ids == list(expected)
        [trained] = trained_text(encoded, tokenizer)
        assert trained.startswith("<think>") and reply["reasoning_content"] in trained
        assert reply["content"] in trained.split("</think>")[1]


def test_a_pair_with_tool_calls_renders_its_tools_on_both_sides(tmp_path: Path) -> None:
    """Agent data: the chosen reply calls a tool, the rejected one guesses; both sides are
    the agent template's rendering with the record's tools, as apply_chat_template's."""
    from transformers import AutoTokenizer

    from lorapipe.model.source import resolve_model_path

    tokenizer = AutoTokenizer.from_pretrained(resolve_model_path("tiny-llama"))
    agent = Path(__file__).resolve().parents[2] / "configs" / "templates" / \
        "tiny-llama-agent.jinja"
    tokenizer.chat_template = agent.read_text(encoding="utf-8")
    tools = [{"type": "function", "function": {
        "name": "get_weather", "description": "Temperature in a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}}]
    call = {"role": "assistant", "content": "", "tool_calls": [
        {"id": "call00001", "type": "function",
         "function": {"name": "get_weather", "arguments": {"city": "Lima"}}}]}
    prompt = [{"role": "user", "content": "How warm is it in Lima?"}]
    record = to_record({"prompt": prompt, "chosen": [call], "rejected": "About 40C.",
                        "tools": tools}, "auto", {})
    data = validate_config({"model": {"name_or_path": "x"},
                            "data": {"loader": {"name": "jsonl", "path": "x"}},
                            "output_dir": str(tmp_path)}).data
    [sample] = encode_pairs(_Chats(TokenizerTemplate(), tokenizer, data), [record])
    for encoded, reply in ((sample.encoded, call), (sample.rejected, _assistant("About 40C."))):
        expected = tokenizer.apply_chat_template([*prompt, reply], tools=tools, tokenize=True,
                                                 return_dict=False)
        assert encoded.input_ids == list(expected)
    [trained] = trained_text(sample.encoded, tokenizer)
    assert "get_weather" in trained and "Lima" in trained
