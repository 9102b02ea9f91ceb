"""Every chat template in llama.cpp's collection that knows tool messages trains exactly
the reference's tokens on tool-calling conversations, or refuses them with a reason."""

from __future__ import annotations

from pathlib import Path

import pytest
from tool_templates import (
    CONVERSATIONS,
    FAMILIES,
    TEMPLATES,
    TOOLS,
    NoReference,
    check,
    family_tokenizer,
    judged,
    reference_spans,
)

PATHS = [p for p in sorted(TEMPLATES.glob("*.jinja")) if judged(p)]
# The families users fine-tune for tool calling (and complain about): their templates must
# train every conversation they render. Llama 3.x's template itself refuses parallel calls.
# SmolLM3's template in the collection (Unsloth's edit) writes no tool calls at all, so it
# can only refuse them. Mistral Nemo's writes the system prompt into the last message only
# when that is the user's, so a system prompt vanishes once a reply follows: the history
# before the call renders differently from its generation prompt, and lorapipe refuses.
MUST_TRAIN = {
    "meta-llama-Llama-3.1-8B-Instruct": {"one call", "call after call", "system + call"},
    "NousResearch-Hermes-3-Llama-3.1-8B-tool_use": set(CONVERSATIONS),
    "Qwen-Qwen2.5-7B-Instruct": set(CONVERSATIONS),
    "Qwen-Qwen3-0.6B": set(CONVERSATIONS),
    "Qwen3-Coder": set(CONVERSATIONS),
    "mistralai-Mistral-Nemo-Instruct-2407": {"one call", "parallel", "call after call"},
}


def test_the_collection_is_there() -> None:
    stems = {p.stem for p in PATHS}
    assert len(PATHS) >= 60 and set(MUST_TRAIN) <= stems and stems <= set(FAMILIES)


@pytest.mark.parametrize("path", PATHS, ids=lambda p: p.stem)
def test_template_trains_the_reference_spans_or_is_refused(path: Path) -> None:
    outcomes = {name: check(path, name) for name in CONVERSATIONS}
    for name, outcome in outcomes.items():
        assert outcome == "trained correctly" or outcome.startswith("refused: "), (name, outcome)
    if path.stem in MUST_TRAIN:
        trained = {name for name, outcome in outcomes.items() if outcome == "trained correctly"}
        assert trained == MUST_TRAIN[path.stem], outcomes


def _trained_text(stem: str, conversation: str) -> list[str]:
    family = FAMILIES[stem]
    text, spans = reference_spans(CONVERSATIONS[conversation], TOOLS,
                                  family_tokenizer(family.vocab),
                                  (TEMPLATES / f"{stem}.jinja").read_text(encoding="utf-8"),
                                  family)
    return [text[start:end] for start, end in spans]


def test_the_reference_trains_calls_and_replies_up_to_their_stop_token() -> None:
    """The reference itself, read once and pinned: each call from its markup and each reply
    from its text, through the family's stop token, never the tool results or the next
    turn's header."""
    assert _trained_text("Qwen-Qwen3-0.6B", "call after call") == [
        '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Lyon"}}\n</tool_call>'
        "<|im_end|>",
        '<tool_call>\n{"name": "get_time", "arguments": {"timezone": "Asia/Tokyo"}}\n'
        "</tool_call><|im_end|>",
        "It is cloudy in Lyon and evening in Tokyo.<|im_end|>",  # not its <think></think>
    ]
    assert _trained_text("meta-llama-Llama-3.1-8B-Instruct", "one call") == [
        '{"name": "get_weather", "parameters": {"city": "Lyon"}}<|eot_id|>',
        "Lyon is cloudy at 18 degrees.<|eot_id|>",
    ]
    assert _trained_text("openai-gpt-oss-120b", "one call") == [
        ' to=functions.get_weather<|channel|>commentary json<|message|>{"city": "Lyon"}<|call|>',
        "Lyon is cloudy at 18 degrees.<|return|>",
    ]
    # GLM stops on the next turn's role token; a last reply it closes with nothing
    assert _trained_text("GLM-4.6", "one call") == [
        "<tool_call>get_weather\n<arg_key>city</arg_key>\n<arg_value>Lyon</arg_value>\n"
        "</tool_call><|observation|>",
        "Lyon is cloudy at 18 degrees.",
    ]
    # parallel calls as messages in a row: <|eom|> ends one, the model writes the next
    calls = [f' to={name}<|message|><atem:function_calls>\n<atem:invoke name="{name}">\n'
             f'<atem:parameter name="{key}">{value}</atem:parameter>\n</atem:invoke>\n'
             "</atem:function_calls>"
             for name, key, value in [("get_weather", "city", "Lyon"),
                                      ("get_time", "timezone", "Asia/Tokyo")]]
    assert _trained_text("muse-glimmer", "parallel")[0] == (
        calls[0] + "<|eom|><|start|>assistant" + calls[1] + "<|eot|>")


@pytest.mark.parametrize("stem", ["HuggingFaceTB-SmolLM3-3B", "LFM2-8B-A1B",
                                  "ibm-granite-granite-3.3-2B-Instruct"])
def test_the_reference_finds_no_call_where_the_template_drops_it(stem: str) -> None:
    with pytest.raises(NoReference, match="does not render the call"):
        _trained_text(stem, "one call")
