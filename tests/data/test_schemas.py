"""Every supported schema, read from JSONL, gives the same canonical conversation."""

from __future__ import annotations

from pathlib import Path

import pytest
from prepare_helpers import write_jsonl

from lorapipe.authoring.file_loader import FileOptions as JsonlOptions
from lorapipe.data.schemas import RecordError, check_columns, conversation_id, to_messages
from lorapipe.errors import ConfigError
from lorapipe.plugins.loaders.jsonl import JsonlLoader

CANONICAL = [{"role": "system", "content": "Be brief."},
             {"role": "user", "content": "Name a prime."},
             {"role": "assistant", "content": "7."}]
RECORDS = {
    "messages": {"messages": CANONICAL},
    "alpaca": {"system": "Be brief.", "instruction": "Name a prime.", "input": "", "output": "7."},
    "sharegpt": {"conversations": [{"from": "system", "value": "Be brief."},
                                   {"from": "human", "value": "Name a prime."},
                                   {"from": "gpt", "value": "7."}]},
    "instruction_response": {"system": "Be brief.", "instruction": "Name a prime.",
                             "response": "7.", "conversation_id": "c-1"},
    "prompt_response": {"system": "Be brief.", "prompt": "Name a prime.", "response": "7."},
}


def read(path: Path) -> list:
    return list(JsonlLoader(JsonlOptions(path=[str(path)])).records())


@pytest.mark.parametrize("fmt", RECORDS)
def test_each_schema_gives_the_canonical_conversation(fmt: str, tmp_path: Path) -> None:
    [record] = read(write_jsonl(tmp_path / f"{fmt}.jsonl", [RECORDS[fmt]]))
    assert record.location.endswith(f"{fmt}.jsonl:1")
    assert to_messages(record.data, "auto", {}) == CANONICAL
    assert to_messages(record.data, fmt, {}) == CANONICAL


def test_instruction_response_takes_its_input_and_keeps_the_conversation_id() -> None:
    record = {"instruction": "Translate.", "input": "chat", "response": "cat",
              "conversation_id": 17}
    assert to_messages(record, "auto", {}) == [
        {"role": "user", "content": "Translate.\n\nchat"},
        {"role": "assistant", "content": "cat"}]
    assert conversation_id(record, {}) == "17"
    assert conversation_id({"conversation": "a"}, {"conversation_id": "conversation"}) == "a"
    assert conversation_id({"instruction": "x"}, {}) is None
    with pytest.raises(RecordError, match="conversation_id"):
        conversation_id({"conversation_id": ["a"]}, {})


def test_alpaca_input_joins_the_instruction() -> None:
    record = {"instruction": "Translate.", "input": "chat", "output": "cat"}
    assert to_messages(record, "auto", {})[0] == {"role": "user", "content": "Translate.\n\nchat"}


def test_columns_rename_unusual_fields(tmp_path: Path) -> None:
    row = {"question": "Name a prime.", "answer": "7.", "sys": "Be brief."}
    columns = {"prompt": "question", "response": "answer", "system": "sys"}
    check_columns(columns)
    [record] = read(write_jsonl(tmp_path / "odd.jsonl", [row]))
    assert to_messages(record.data, "auto", columns) == CANONICAL


def test_unknown_column_key_names_the_field() -> None:
    with pytest.raises(ConfigError, match=r"data\.columns\.answer: unknown field"):
        check_columns({"answer": "a"})


@pytest.mark.parametrize(("data", "reason"), [
    ({"conversations": [{"from": "robot", "value": "x"}]}, "unknown_role"),
    ({"messages": [{"role": "user", "content": 3}]}, "wrong_type"),
    ({"messages": "hello"}, "wrong_type"),
    ({"body": "just text"}, "unknown_schema"),
])
def test_bad_records_name_their_reason(data: dict, reason: str) -> None:
    with pytest.raises(RecordError) as err:
        to_messages(data, "auto", {})
    assert err.value.reason == reason


def test_loader_streams_gzip_and_globs(tmp_path: Path) -> None:
    import gzip
    import json

    (tmp_path / "a.jsonl").write_text(json.dumps(RECORDS["messages"]) + "\n")
    with gzip.open(tmp_path / "b.jsonl.gz", "wt") as handle:
        handle.write(json.dumps(RECORDS["alpaca"]) + "\n")
    records = list(JsonlLoader(JsonlOptions(path=[str(tmp_path / "*.jsonl*")])).records())
    assert [r.location.rsplit("/", 1)[1] for r in records] == ["a.jsonl:1", "b.jsonl.gz:1"]
    assert all(to_messages(r.data, "auto", {}) == CANONICAL for r in records)
