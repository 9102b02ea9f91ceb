"""The prepare stage end to end on tiny-llama: accounting, strict mode, split, caching,
length strategies and the output contract."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from datasets import load_from_disk
from prepare_helpers import chat, read_report, write_jsonl
from transformers import AutoTokenizer

import lorapipe.data.chunks as chunks_module
import lorapipe.data.encoding as encoding_module
from lorapipe.cli import main
from lorapipe.data.cleaning import dedupe_key
from lorapipe.data.schemas import Record
from lorapipe.errors import UserError

EOT = "<|eot_id|>"


def bad_rows() -> dict[str, Any]:
    """One malformed line per kind, keyed by the reason it must be reported under."""
    good = chat(0)["messages"]
    return {
        "malformed_json": '{"messages": [',
        "wrong_type": [1, 2, 3],
        "unknown_role": {"messages": [{"role": "robot", "content": "hi"}, good[1]]},
        "no_assistant_turn": {"messages": good[:1]},
        "empty_assistant_content": {"messages": [good[0], {"role": "assistant",
                                                           "content": "  \n"}]},
        "invalid_text": b'{"messages": [{"role": "user", "content": "caf\xe9"}]}',
        "unknown_schema": {"body": "plain text, no schema"},
        "duplicate": {"messages": [{"role": m["role"], "content": "  " + m["content"].upper()}
                                   for m in chat(2)["messages"]]},  # = line of chat(2)
    }


def write_mixed(path: Path, good: int = 72) -> dict[int, str]:
    """``good`` clean records with the bad ones spread in (~10%); returns line → reason."""
    rows: list[Any] = [chat(i, turns=1 + i % 2, system=i % 3 == 0) for i in range(good)]
    expected = {}
    for k, row in enumerate(bad_rows().values()):
        rows.insert(5 + k * 9, row)
    for line, row in enumerate(rows, start=1):
        for reason, bad in bad_rows().items():
            if row is bad or row == bad:
                expected[line] = reason
    write_jsonl(path, rows)
    return expected


def test_bad_lines_are_reported_and_counts_add_up(tmp_path: Path, prepare: Any) -> None:
    data = tmp_path / "mixed.jsonl"
    expected = write_mixed(data)
    assert len(expected) == len(bad_rows())
    summary, out = prepare(data)
    report = read_report(out)
    dropped = [json.loads(line) for line in (out / "data" / "dropped.jsonl").open()]
    assert {int(d["location"].rsplit(":", 1)[1]): d["reason"] for d in dropped} == expected
    assert report["dropped"] == {reason: 1 for reason in expected.values()}
    for examples in report["examples"].values():
        assert examples[0]["location"].startswith(f"{data}:")
        assert examples[0]["detail"]
    sizes = report["split"]["sizes"]
    assert report["records_read"] == report["kept"] + sum(report["dropped"].values())
    assert report["kept"] == sizes["train"] + sizes["validation"] == 72
    assert summary["reused"] is False


def test_strict_exits_2_naming_the_first_bad_line(tmp_path: Path, capsys: Any) -> None:
    data = tmp_path / "mixed.jsonl"
    first_bad = min(write_mixed(data))
    config = tmp_path / "strict.yaml"
    config.write_text(json.dumps({
        "model": {"name_or_path": "tiny-llama"},
        "data": {"loader": {"name": "jsonl", "path": str(data)}, "strict": True},
        "output_dir": str(tmp_path / "run"),
    }))
    assert main(["prepare", str(config)]) == 2
    err = capsys.readouterr().err
    assert f"{data}:{first_bad}: malformed_json" in err
    assert "Traceback" not in err


def test_outputs_follow_the_contract(tmp_path: Path, prepare: Any) -> None:
    data = write_jsonl(tmp_path / "d.jsonl", [chat(i, turns=2, system=True) for i in range(20)])
    _, out = prepare(data, validation={"count": 3})
    train = load_from_disk(str(out / "data" / "train"))
    assert train.column_names == ["input_ids", "attention_mask", "labels",
                                  "rejected_input_ids", "rejected_labels", "desirable",
                                  "messages", "tools", "kind", "source", "conversation_id"]
    assert set(train["desirable"]) == {-1} and not any(train["rejected_input_ids"])
    assert set(train["kind"]) == {"chat"} and set(train["tools"]) == {None}
    assert len(train) == 17 and len(load_from_disk(str(out / "data" / "validation"))) == 3
    tokenizer = AutoTokenizer.from_pretrained(out / "data" / "tokenizer")
    row = train[0]
    assert row["attention_mask"] == [1] * len(row["input_ids"])
    trained = [t for t, label in zip(row["input_ids"], row["labels"], strict=True)
               if label != -100]
    assert trained == [label for label in row["labels"] if label != -100]
    messages = json.loads(row["messages"])
    assert tokenizer.decode(trained) == "".join(
        m["content"] + EOT for m in messages if m["role"] == "assistant")
    assert row["source"] == f"{data}:{int(row['source'].rsplit(':', 1)[1])}"
    report = read_report(out)
    assert report["trainable_tokens"]["train"] == sum(
        sum(label != -100 for label in r) for r in train["labels"])
    assert set(report["tokens"]) == {"total", "prompt", "response"}


def _sources(out: Path, split: str) -> list[str]:
    return list(load_from_disk(str(out / "data" / split))["source"])


def test_split_is_seeded_disjoint_and_deduplicated_first(tmp_path: Path, prepare: Any) -> None:
    rows = [chat(i) for i in range(60)]
    # variants differing only in case and whitespace are the same conversation
    rows += [{"messages": [{"role": m["role"], "content": f" {m['content'].lower()}  "}
                           for m in chat(i)["messages"]]} for i in range(30)]
    data = write_jsonl(tmp_path / "d.jsonl", rows)
    _, first = prepare(data, output="a", validation={"fraction": 0.2})
    _, again = prepare(data, output="b", validation={"fraction": 0.2})
    _, other = prepare(data, output="c", seed=7, validation={"fraction": 0.2})
    train, val = _sources(first, "train"), _sources(first, "validation")
    assert len(val) == 12 and len(train) == 48  # 90 read, 30 duplicates
    assert not set(train) & set(val)
    assert (train, val) == (_sources(again, "train"), _sources(again, "validation"))
    assert val != _sources(other, "validation")
    keys = {split: {dedupe_key(Record.from_body(json.loads(m))) for m in
                    load_from_disk(str(first / "data" / split))["messages"]}
            for split in ("train", "validation")}
    assert not keys["train"] & keys["validation"]
    assert read_report(first)["dropped"] == {"duplicate": 30}


def test_stratified_split_keeps_every_group(tmp_path: Path, prepare: Any) -> None:
    rows = [chat(i, category="rare" if i % 10 == 0 else "common") for i in range(50)]
    data = write_jsonl(tmp_path / "d.jsonl", rows)
    _, out = prepare(data, validation={"count": 10, "stratify_by": "category"})
    lines = [int(s.rsplit(":", 1)[1]) for s in _sources(out, "validation")]
    assert sum((line - 1) % 10 == 0 for line in lines) == 1  # 5 of 50 are rare → 1 of 10


def test_records_of_one_conversation_stay_on_one_side_of_every_split(
        tmp_path: Path, prepare: Any) -> None:
    # The design's own schema: instruction/response, conversation_id kept as metadata.
    rows = [{"instruction": f"Step {i} of task {i // 4}?", "response": f"Done {i}.",
             "conversation_id": f"task-{i // 4}"} for i in range(80)]
    data = write_jsonl(tmp_path / "d.jsonl", rows)
    _, out = prepare(data, validation={"count": 10}, test={"count": 10})
    sides = {}
    for split in ("train", "validation", "test"):
        for conversation in load_from_disk(str(out / "data" / split))["conversation_id"]:
            sides.setdefault(conversation, set()).add(split)
    assert len(sides) == 20
    assert all(len(found) == 1 for found in sides.values())
    sizes = read_report(out)["split"]["sizes"]
    assert sizes["validation"] == sizes["test"] == 12  # whole conversations of 4


def test_separate_validation_loader(tmp_path: Path, prepare: Any) -> None:
    data = write_jsonl(tmp_path / "train.jsonl", [chat(i) for i in range(10)])
    held = write_jsonl(tmp_path / "val.jsonl", [chat(i) for i in range(8, 14)])
    _, out = prepare(data, validation={"loader": {"name": "jsonl", "path": str(held)}})
    assert len(_sources(out, "train")) == 10
    assert [s.rsplit(":", 1)[1] for s in _sources(out, "validation")] == ["3", "4", "5", "6"]
    assert read_report(out)["validation_source"]["dropped"] == {"duplicate": 2}


def test_too_little_data_is_a_clear_error(tmp_path: Path, prepare: Any) -> None:
    data = write_jsonl(tmp_path / "d.jsonl", [chat(i) for i in range(3)])
    with pytest.raises(UserError, match=r"data\.validation\.count: only 3 usable record"):
        prepare(data, validation={"count": 3})


def test_second_run_reuses_and_changes_redo(tmp_path: Path, prepare: Any) -> None:
    data = write_jsonl(tmp_path / "d.jsonl", [chat(i) for i in range(20)])
    summary, out = prepare(data)
    assert summary["reused"] is False
    stamp = (out / "data" / "train").stat().st_mtime_ns
    summary, _ = prepare(data)
    assert summary["reused"] is True
    assert (out / "data" / "train").stat().st_mtime_ns == stamp
    summary, _ = prepare(data, max_length=64)  # config change
    assert summary["reused"] is False
    write_jsonl(data, [chat(i) for i in range(21)])  # data change
    summary, _ = prepare(data, max_length=64)
    assert summary["reused"] is False and summary["kept"] == 21


def test_chunked_reading_gives_the_same_result(tmp_path: Path, prepare: Any,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """Big inputs are encoded batch by batch by worker processes while this process reads
    on, and written in chunks (bounded memory); batch, chunk and worker boundaries must not
    change a sample, a drop, its place in dropped.jsonl, or a count."""
    data = tmp_path / "mixed.jsonl"
    write_mixed(data)  # the duplicate's original and the bad lines land in other batches
    # ~1/3 of the records are too long: dropped by the workers, after reading
    _, whole = prepare(data, output="whole", max_length=72)
    monkeypatch.setattr(encoding_module, "_BATCH", 4)
    monkeypatch.setattr(encoding_module, "_CHUNK_BYTES", 6000)  # a few batches a chunk
    monkeypatch.setattr(chunks_module, "SAVE_IN_PROCESS_BYTES", 4096)  # save by workers
    _, chunked = prepare(data, output="chunked", max_length=72)
    assert len(list((chunked / "data" / "train").glob("data-*.arrow"))) > 1  # by workers
    for split in ("train", "validation"):
        assert (load_from_disk(str(chunked / "data" / split)).to_dict()
                == load_from_disk(str(whole / "data" / split)).to_dict())
    drop_lists = [(out / "data" / "dropped.jsonl").read_text() for out in (whole, chunked)]
    assert drop_lists[0] == drop_lists[1]
    reasons = [json.loads(line)["reason"] for line in drop_lists[0].splitlines()]
    assert reasons.count("too_long") > 5
    assert reasons[-reasons.count("too_long"):] == ["too_long"] * reasons.count("too_long")
    reports = [read_report(out) for out in (whole, chunked)]
    for report in reports:
        report.pop("fingerprint")
    assert reports[0] == reports[1]


def test_prepare_does_not_import_peft() -> None:
    """The stage needs the tokenizer only; peft and bitsandbytes take seconds to import."""
    code = ("import sys, lorapipe.data.stage; "
            "print(sorted({'peft', 'bitsandbytes'} & set(sys.modules)))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            check=True)
    assert result.stdout.strip() == "[]"


def test_the_trained_template_is_the_one_the_outputs_serve(tmp_path: Path, prepare: Any) -> None:
    """With a named template the saved tokenizer (copied to merged/, read by the GGUF
    exporter) carries that template's Jinja, not the base model's own template."""
    from lorapipe.plugins.templates.llama import Llama2Template

    data = tmp_path / "chats.jsonl"
    write_jsonl(data, [chat(i, turns=2, system=True) for i in range(24)])
    _, out = prepare(data, template="llama2")
    saved = AutoTokenizer.from_pretrained(out / "data" / "tokenizer")
    assert saved.chat_template == Llama2Template.chat_template
    row = load_from_disk(str(out / "data" / "train"))[0]
    served = saved.apply_chat_template(json.loads(row["messages"]), tokenize=False)
    assert saved.decode(row["input_ids"]) == served


def test_prepared_data_is_reused_only_if_every_file_verifies(tmp_path: Path, prepare: Any) -> None:
    """A truncated Arrow file is not reused (prepare writes the data again) and is refused
    by training, naming the file, instead of crashing it later."""
    from lorapipe.artifacts import RunPaths
    from lorapipe.errors import UserError
    from lorapipe.manifest import problem

    data = tmp_path / "chats.jsonl"
    write_jsonl(data, [chat(i) for i in range(30)])
    assert prepare(data)[0]["reused"] is False
    summary, out = prepare(data)
    assert summary["reused"] is True
    arrow = next((out / "data" / "train").glob("*.arrow"))
    arrow.write_bytes(arrow.read_bytes()[:100])
    with pytest.raises(UserError, match=rf"{arrow.name} does not match its checksum.*prepare"):
        RunPaths(out).require_data()
    summary, out = prepare(data)
    assert summary["reused"] is False and problem(out / "data") is None


def test_a_template_that_cannot_work_names_the_ones_that_can(tmp_path: Path,
                                                             capsys: Any) -> None:
    """A base model without a chat template and data.template: tokenizer fails before any
    record is read, and the advice lists the installed templates whose tokens this
    tokenizer has (llama3 here), not a fixed suggestion."""
    import shutil

    import yaml

    from lorapipe.model.source import resolve_model_path

    model = shutil.copytree(resolve_model_path("tiny-llama"), tmp_path / "base-model")
    config_path = model / "tokenizer_config.json"
    tokenizer_config = json.loads(config_path.read_text())
    tokenizer_config.pop("chat_template", None)
    config_path.write_text(json.dumps(tokenizer_config))
    (model / "chat_template.jinja").unlink(missing_ok=True)
    data = write_jsonl(tmp_path / "d.jsonl", [chat(i) for i in range(10)])
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump({"model": {"name_or_path": str(model)},
                                    "data": {"loader": {"name": "jsonl", "path": str(data)}},
                                    "output_dir": str(tmp_path / "run")}))
    assert main(["prepare", str(path)]) == 2
    err = capsys.readouterr().err
    assert "data.template: the model's tokenizer has no chat_template" in err
    works = err.split("Templates that work with this model's tokenizer: ")[1].split(" (")[0]
    assert "llama3" in works.split(", ") and "tokenizer" not in works.split(", ")
    assert "chatml" not in works  # tiny-llama has no <|im_start|>


def _reply(text: str) -> dict[str, Any]:
    return {"messages": [{"role": "user", "content": "Tell me about the harbour town."},
                         {"role": "assistant", "content": text}]}


def test_near_duplicates_and_short_replies_are_dropped_before_the_split(
        tmp_path: Path, prepare: Any) -> None:
    """A conversation that differs from a kept one by one word is a near duplicate (with
    data.near_dedupe), counted and named like exact duplicates; a reply shorter than
    data.min_response_chars is dropped as too short. Distinct conversations all stay."""
    long = ("The harbour town has a lighthouse, a fish market that opens at dawn, narrow "
            "streets of painted houses, and a ferry that crosses to the island twice a day.")
    rows = [_reply(long),
            _reply(long.replace("twice", "three times")),  # one word changed: a near copy
            _reply("Ok."),  # 3 characters
            *[chat(i) for i in range(20)]]
    data = tmp_path / "chats.jsonl"
    write_jsonl(data, rows)
    _, out = prepare(data, near_dedupe={"threshold": 0.7}, min_response_chars=5,
                     validation={"count": 4})
    report = read_report(out)
    assert report["dropped"] == {"near_duplicate": 1, "too_short": 1}
    dropped = {json.loads(line)["reason"]: json.loads(line)
               for line in (out / "data" / "dropped.jsonl").open()}
    assert dropped["near_duplicate"]["location"] == f"{data}:2"
    assert f"{data}:1" in dropped["near_duplicate"]["detail"]
    assert dropped["too_short"]["location"] == f"{data}:3"
    assert report["kept"] == 21

    _, plain = prepare(data, output="plain", validation={"count": 4})  # both off by default
    assert read_report(plain)["kept"] == 23


def test_a_test_split_is_held_out_apart_from_validation_and_removed_when_unset(
        tmp_path: Path, prepare: Any) -> None:
    data = tmp_path / "chats.jsonl"
    write_jsonl(data, [chat(i) for i in range(40)])
    summary, out = prepare(data, test={"count": 6}, validation={"count": 4})
    assert (summary["train"], summary["validation"], summary["test"]) == (30, 4, 6)
    sources = {split: set(load_from_disk(str(out / "data" / split))["source"])
               for split in ("train", "validation", "test")}
    assert not sources["test"] & (sources["train"] | sources["validation"])
    assert not sources["train"] & sources["validation"]
    assert len(set().union(*sources.values())) == 40
    _, again = prepare(data, output="again", test={"count": 6}, validation={"count": 4})
    assert set(load_from_disk(str(again / "data" / "test"))["source"]) == sources["test"]

    summary, out = prepare(data, validation={"count": 4})  # same run directory, no test
    assert "test" not in summary and not (out / "data" / "test").exists()


def test_a_test_split_from_a_separate_source_is_deduplicated_against_training(
        tmp_path: Path, prepare: Any) -> None:
    train, test = tmp_path / "train.jsonl", tmp_path / "test.jsonl"
    write_jsonl(train, [chat(i) for i in range(30)])
    write_jsonl(test, [chat(100 + i) for i in range(5)] + [chat(3)])  # chat(3): in training
    summary, out = prepare(train, test={"loader": {"name": "jsonl", "path": str(test)}},
                           validation={"count": 4})
    assert (summary["train"], summary["validation"], summary["test"]) == (26, 4, 5)
    report = read_report(out)
    assert report["test_source"]["dropped"] == {"duplicate": 1}
    assert report["split"]["test_method"] == "loader"
    assert {s.split(":")[0] for s in load_from_disk(str(out / "data" / "test"))["source"]} == {
        str(test)}
