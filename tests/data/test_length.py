"""max_length strategies: drop, truncate_history, truncate_prompt, truncate_response."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from prepare_helpers import chat, read_report, write_jsonl

from lorapipe.data.length import fit
from lorapipe.data.schemas import RecordError
from lorapipe.plugins.templates.llama import Llama2Template
from lorapipe.plugins.templates.tokenizer import TokenizerTemplate

LONG = chat(1, turns=6, system=True)["messages"]
REPLY = [{"role": "user", "content": "Tell me a story."},
         {"role": "assistant", "content": "Once upon a time there was a little village at the "
          "edge of a great forest, and every morning the people walked to the market."}]


def _fit(template: Any, tokenizer: Any, messages: list, max_length: int, strategy: str):
    def encode(m: list) -> Any:
        return template.encode(m, tokenizer)

    return fit(messages, encode(messages), encode, tokenizer, max_length, strategy)


def _replies(messages: list) -> list[str]:
    return [m["content"] for m in messages if m["role"] == "assistant"]


@pytest.mark.parametrize("template", [TokenizerTemplate(), Llama2Template()],
                         ids=lambda t: t.name)
def test_truncate_history_keeps_system_and_latest_turns(template: Any, tokenizer: Any) -> None:
    full = template.encode(LONG, tokenizer)
    messages, encoded, cut = _fit(template, tokenizer, LONG, len(full.input_ids) - 20,
                                  "truncate_history")
    assert cut and len(encoded.input_ids) <= len(full.input_ids) - 20
    assert messages[0] == LONG[0]  # the system prompt stays
    assert messages[1:] == LONG[-(len(messages) - 1):]  # whole latest exchanges
    assert messages[1]["role"] == "user"
    assert encoded.input_ids == template.encode(messages, tokenizer).input_ids
    assert _replies(messages)[-1] == _replies(LONG)[-1]


@pytest.mark.parametrize("template", [TokenizerTemplate(), Llama2Template()],
                         ids=lambda t: t.name)
def test_truncate_response_shortens_the_reply_and_closes_it(template: Any,
                                                            tokenizer: Any) -> None:
    full = template.encode(REPLY, tokenizer)
    limit = len(full.input_ids) - 10
    messages, encoded, cut = _fit(template, tokenizer, REPLY, limit, "truncate_response")
    assert cut and len(encoded.input_ids) <= limit
    reply = messages[-1]["content"]
    assert reply and REPLY[-1]["content"].startswith(reply)
    end = tokenizer.eos_token_id if isinstance(template, Llama2Template) else \
        tokenizer.convert_tokens_to_ids("<|eot_id|>")
    assert encoded.input_ids[-1] == end and encoded.trainable[-1]


@pytest.mark.parametrize("template", [TokenizerTemplate(), Llama2Template()],
                         ids=lambda t: t.name)
def test_truncate_prompt_cuts_the_first_user_turn_from_its_start(template: Any,
                                                                  tokenizer: Any) -> None:
    """keep_end: with no earlier exchange to drop, the user turn loses its first words;
    its end, the reply and the turn structure stay (the template renders the cut text)."""
    question = {"role": "user", "content": " ".join(f"word{i}" for i in range(40))
                + " So, what happened next?"}
    messages = [question, REPLY[1]]
    full = template.encode(messages, tokenizer)
    limit = len(full.input_ids) - 25
    cut_messages, encoded, cut = _fit(template, tokenizer, messages, limit, "truncate_prompt")
    assert cut and len(encoded.input_ids) <= limit
    kept = cut_messages[0]["content"]
    assert question["content"].endswith(kept.strip()) and "word0 " not in kept
    assert cut_messages[1] == REPLY[1]
    assert encoded.input_ids == template.encode(cut_messages, tokenizer).input_ids
    assert _replies(cut_messages) == _replies(messages)
    with pytest.raises(RecordError, match="cut to nothing"):
        _fit(template, tokenizer, messages, 16, "truncate_prompt")


def test_drop_and_impossible_truncations_are_too_long(tokenizer: Any) -> None:
    template = TokenizerTemplate()
    for strategy in ("drop", "truncate_history", "truncate_prompt", "truncate_response"):
        with pytest.raises(RecordError) as err:
            _fit(template, tokenizer, REPLY, 16, strategy)  # the prompt alone is longer
        assert err.value.reason == "too_long"


def test_prepare_counts_drops_and_truncations(tmp_path: Path, prepare: Any) -> None:
    rows = [chat(i) for i in range(20)] + [chat(100 + i, turns=8, system=True)
                                           for i in range(4)]
    data = write_jsonl(tmp_path / "d.jsonl", rows)
    _, dropped = prepare(data, output="drop", max_length=80, validation={"count": 2})
    report = read_report(dropped)
    assert report["dropped"] == {"too_long": 4} and report["truncated"] == 0
    assert report["examples"]["too_long"][0]["location"] == f"{data}:21"
    _, cut = prepare(data, output="cut", max_length=80, length_strategy="truncate_history",
                     validation={"count": 2})
    report = read_report(cut)
    assert report["dropped"] == {} and report["truncated"] == 4
    assert report["tokens"]["total"]["max"] <= 80
