"""Records that would cost unbounded work, or files written by other tools: each bad
record is dropped with its reason and counted, the rest kept, and a prepare that keeps
nothing still leaves its report behind."""

from __future__ import annotations

import gzip
import json
from pathlib import Path
from typing import Any

import pytest
from prepare_helpers import chat, read_report, write_jsonl

from lorapipe.authoring.file_loader import FileOptions
from lorapipe.errors import UserError
from lorapipe.plugins.loaders.jsonl import MAX_DEPTH, JsonlLoader

BOM = b"\xef\xbb\xbf"


def _read(path: Path) -> list[Any]:
    return list(JsonlLoader(FileOptions(path=[str(path)])).records())


def _lines(rows: list[dict[str, Any]]) -> bytes:
    return b"".join(json.dumps(row).encode() + b"\n" for row in rows)


@pytest.mark.parametrize("name", ["bom.jsonl", "bom.jsonl.gz"])
def test_a_leading_bom_keeps_the_first_record(tmp_path: Path, name: str) -> None:
    path = tmp_path / name
    content = BOM + _lines([chat(0), chat(1)])
    path.write_bytes(gzip.compress(content) if name.endswith(".gz") else content)
    records = _read(path)
    assert [r.error for r in records] == [None, None]
    assert [r.data for r in records] == [chat(0), chat(1)]


def test_depth_limit_counts_brackets_outside_strings_only(tmp_path: Path) -> None:
    deepest = {"messages": chat(0)["messages"], "x": json.loads("[" * (MAX_DEPTH - 1)
                                                                + "]" * (MAX_DEPTH - 1))}
    in_text = chat(1)
    in_text["messages"][0]["content"] = "[{" * 5000 + '\\"]'  # brackets and quotes in text
    path = write_jsonl(tmp_path / "d.jsonl", [
        deepest,
        in_text,
        '{"x": ' + "[" * MAX_DEPTH + "]" * MAX_DEPTH + "}",  # one level too deep
    ])
    records = _read(path)
    assert records[0].data == deepest and records[1].data == in_text
    assert records[2].error is not None
    assert (records[2].error.reason, records[2].error.detail) == (
        "malformed_json", f"nested deeper than {MAX_DEPTH} levels")


def test_deep_and_huge_records_are_dropped_and_counted(tmp_path: Path, prepare: Any) -> None:
    huge = chat(999)
    huge["messages"][1]["content"] = "word " * 600_000  # 3 MB, one line
    rows: list[Any] = [chat(i) for i in range(12)]
    rows.insert(3, "[" * 100_000 + "]" * 100_000)
    rows.insert(7, huge)
    data = write_jsonl(tmp_path / "d.jsonl", rows)
    summary, out = prepare(data, max_length=64, validation={"count": 2})
    report = read_report(out)
    assert summary["records_read"] == 14 and summary["kept"] == 12
    assert report["dropped"] == {"malformed_json": 1, "too_long": 1}
    assert report["examples"]["malformed_json"] == [
        {"location": f"{data}:4", "detail": f"nested deeper than {MAX_DEPTH} levels"}]
    [too_long] = report["examples"]["too_long"]
    assert too_long["location"] == f"{data}:8"
    chars = sum(len(m["content"]) for m in huge["messages"])
    assert too_long["detail"] == (
        f"message content of {chars:,} characters, more than the 2,048 that data.max_length "
        "64 tokens can hold (32 a token); dropped without tokenizing")
    dropped = [json.loads(line) for line in (out / "data" / "dropped.jsonl").open()]
    assert [(d["location"], d["reason"]) for d in dropped] == [
        (f"{data}:4", "malformed_json"), (f"{data}:8", "too_long")]


def _dropped_reasons(out: Path) -> list[str]:
    return [json.loads(line)["reason"] for line in (out / "data" / "dropped.jsonl").open()]


def test_when_every_record_is_dropped_the_reasons_are_kept(tmp_path: Path,
                                                           prepare: Any) -> None:
    no_reply = {"messages": chat(0)["messages"][:1]}
    data = write_jsonl(tmp_path / "d.jsonl", [no_reply, "not json", {"body": "x"}])
    with pytest.raises(UserError, match=r"data\.loader: no usable records after cleaning"):
        prepare(data)
    out = tmp_path / "run"
    report = read_report(out)
    assert report["records_read"] == 3 and report["kept"] == 0
    assert report["dropped"] == {"malformed_json": 1, "no_assistant_turn": 1,
                                 "unknown_schema": 1}
    assert "no usable records" in report["error"] and "fingerprint" not in report
    assert _dropped_reasons(out) == ["no_assistant_turn", "malformed_json", "unknown_schema"]
    assert not (out / "data" / "train").exists()


def test_too_few_left_to_split_keeps_the_reasons(tmp_path: Path, prepare: Any) -> None:
    data = write_jsonl(tmp_path / "d.jsonl", [chat(0), "not json", chat(0)])
    with pytest.raises(UserError, match=r"only 1 usable record"):
        prepare(data)
    report = read_report(tmp_path / "run")
    assert report["kept"] == 1 and report["dropped"] == {"duplicate": 1, "malformed_json": 1}
    assert _dropped_reasons(tmp_path / "run") == ["malformed_json", "duplicate"]


def test_an_empty_validation_source_keeps_the_reasons(tmp_path: Path, prepare: Any) -> None:
    data = write_jsonl(tmp_path / "train.jsonl", [chat(i) for i in range(4)])
    held = write_jsonl(tmp_path / "val.jsonl", [chat(1), "[1]"])
    with pytest.raises(UserError, match=r"data\.validation\.loader: no usable records"):
        prepare(data, validation={"loader": {"name": "jsonl", "path": str(held)}})
    report = read_report(tmp_path / "run")
    assert report["kept"] == 4
    assert report["validation_source"]["dropped"] == {"duplicate": 1, "wrong_type": 1}
    assert _dropped_reasons(tmp_path / "run") == ["duplicate", "wrong_type"]


def test_truncating_strategies_bound_each_message_not_the_conversation(
        tmp_path: Path, prepare: Any) -> None:
    """truncate_history keeps a long conversation (it drops its early turns); only a single
    message too large to ever fit is dropped untokenized."""
    turns = [m for n in range(40) for m in chat(n)["messages"] if m["role"] != "system"]
    for message in turns:
        message["content"] = message["content"] + " padding" * 8  # ~5,000 chars in all
    long_history = {"messages": turns}
    one_huge = chat(99)
    one_huge["messages"][-1]["content"] = "y" * 5_000  # > 128 tokens x 32 characters
    data = write_jsonl(tmp_path / "d.jsonl", [*(chat(i) for i in range(10)), long_history,
                                              one_huge])
    summary, out = prepare(data, max_length=128, length_strategy="truncate_history",
                           validation={"count": 2})
    report = read_report(out)
    assert report["dropped"] == {"too_long": 1}
    assert report["examples"]["too_long"][0]["location"] == f"{data}:12"
    assert summary["kept"] == 11


def test_an_integer_past_pythons_digit_limit_drops_one_record(tmp_path: Path) -> None:
    from lorapipe.authoring.file_loader import FileOptions
    from lorapipe.plugins.loaders.jsonl import JsonlLoader

    path = tmp_path / "big.jsonl"
    path.write_text('{"messages": [], "n": ' + "9" * 5000 + '}\n{"messages": []}\n')
    records = list(JsonlLoader(FileOptions(path=[str(path)])).records())
    assert records[0].error.reason == "malformed_json"
    assert "4300 digits" in records[0].error.detail and records[1].error is None
