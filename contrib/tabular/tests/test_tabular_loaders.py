"""The json, csv and parquet loaders read real files into RawRecords, bad rows included."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from lorapipe_tabular.csv_loader import CsvLoader
from lorapipe_tabular.json_loader import JsonLoader
from lorapipe_tabular.parquet_loader import ParquetLoader
from pydantic import ValidationError

from lorapipe.data.schemas import to_messages
from lorapipe.errors import UserError


def load(cls, **options):
    return list(cls(cls.Options(**options), field="data.loader").records())


# --- json ------------------------------------------------------------------------------


def test_json_top_level_array(tmp_path: Path) -> None:
    path = tmp_path / "qa.json"
    path.write_text(json.dumps([{"question": "q1", "answer": "a1"}, [1, 2], {"question": "q3"}]))
    records = load(JsonLoader, path=str(path))
    assert [r.location for r in records] == [f"{path}:item {n}" for n in (1, 2, 3)]
    assert records[0].data == {"question": "q1", "answer": "a1"}
    assert records[1].data is None and records[1].error.reason == "wrong_type"
    assert records[2].data == {"question": "q3"}


def test_json_list_under_dotted_field(tmp_path: Path) -> None:
    path = tmp_path / "wrapped.json"
    path.write_text(json.dumps({"meta": {}, "data": {"rows": [{"prompt": "p", "response": "r"}]}}))
    records = load(JsonLoader, path=str(path), field="data.rows")
    assert [r.data for r in records] == [{"prompt": "p", "response": "r"}]


def test_json_object_without_field_names_the_lists(tmp_path: Path) -> None:
    path = tmp_path / "wrapped.json"
    path.write_text(json.dumps({"version": 2, "data": {"rows": []}, "train": []}))
    with pytest.raises(UserError, match=r"data.loader.field.*Lists in it: data.rows, train"):
        load(JsonLoader, path=str(path))
    with pytest.raises(UserError, match="field 'rowz' not found; lists in this file"):
        load(JsonLoader, path=str(path), field="rowz")
    with pytest.raises(UserError, match="'version' holds a int, not a list"):
        load(JsonLoader, path=str(path), field="version")


def test_messages_name_the_field_the_loader_was_configured_at(tmp_path: Path) -> None:
    """The same loader class serves data.loader and data.validation.loader; what it tells
    the user to change must be the option of the one that failed."""
    path = tmp_path / "wrapped.json"
    path.write_text(json.dumps({"rows": []}))
    loader = JsonLoader(JsonLoader.Options(path=str(path)), field="data.validation.loader")
    with pytest.raises(UserError, match=r"set data\.validation\.loader\.field to the key"):
        list(loader.records())


def test_json_malformed_file_names_file_and_line(tmp_path: Path) -> None:
    path = tmp_path / "bad.json"
    path.write_text('[\n{"a": 1},\n{"a": }\n]')
    with pytest.raises(UserError, match=rf"{path}:3: malformed JSON"):
        load(JsonLoader, path=str(path))


def test_json_missing_path_is_an_option_error(tmp_path: Path) -> None:
    with pytest.raises(ValidationError, match="no file matches"):
        JsonLoader.Options(path=str(tmp_path / "nope.json"))


# --- csv -------------------------------------------------------------------------------


def test_csv_rows_with_spreadsheet_row_numbers(tmp_path: Path) -> None:
    path = tmp_path / "qa.csv"
    path.write_text(
        'question,answer\n'
        'What is 2+2?,4\n'
        '"A question\nover two lines",yes\n'
        '\n'
        'too,many,fields\n'
        'last,one\n',
        encoding="utf-8",
    )
    records = load(CsvLoader, path=str(path))
    good = [(r.location, r.data) for r in records if r.data]
    assert good == [
        (f"{path}:row 2", {"question": "What is 2+2?", "answer": "4"}),
        (f"{path}:row 3", {"question": "A question\nover two lines", "answer": "yes"}),
        (f"{path}:row 6", {"question": "last", "answer": "one"}),
    ]
    bad = [(r.location, str(r.error)) for r in records if r.error]
    assert bad == [(f"{path}:row 5", "malformed_csv: 3 fields where the header has 2")]


def test_csv_delimiter_encoding_and_tsv(tmp_path: Path) -> None:
    semi = tmp_path / "latin.csv"
    semi.write_bytes("frage;antwort\nGrüße?;Hallo\n".encode("latin-1"))
    assert load(CsvLoader, path=str(semi), delimiter=";", encoding="latin-1")[0].data == {
        "frage": "Grüße?", "antwort": "Hallo"}
    tsv = tmp_path / "qa.tsv"
    tsv.write_text("prompt\tresponse\nhi, there\tyo\n")
    assert load(CsvLoader, path=str(tsv))[0].data == {"prompt": "hi, there", "response": "yo"}


def test_csv_undecodable_bytes_drop_only_that_row(tmp_path: Path) -> None:
    path = tmp_path / "mixed.csv"
    path.write_bytes(b"prompt,response\nok,fine\nbad \xff byte,x\nstill,fine\n")
    records = load(CsvLoader, path=str(path))
    assert [r.data for r in records] == [{"prompt": "ok", "response": "fine"}, None,
                                         {"prompt": "still", "response": "fine"}]
    assert str(records[1].error) == ("invalid_text: column 'prompt' has byte 0xFF, not valid "
                                "utf-8-sig (set data.loader.encoding)")


def test_csv_without_header_uses_column_names(tmp_path: Path) -> None:
    path = tmp_path / "plain.csv"
    path.write_text("\ufeffhello,world\n")  # a BOM, as spreadsheet programs write it
    records = load(CsvLoader, path=str(path), header=False, column_names=["prompt", "response"])
    assert records[0].location == f"{path}:row 1"
    assert records[0].data == {"prompt": "hello", "response": "world"}


def test_csv_option_errors(tmp_path: Path) -> None:
    path = tmp_path / "x.csv"
    path.write_text("a,b\n")
    with pytest.raises(ValidationError, match="needs column_names"):
        CsvLoader.Options(path=str(path), header=False)
    with pytest.raises(ValidationError, match="set header: false"):
        CsvLoader.Options(path=str(path), column_names=["a", "b"])
    with pytest.raises(ValidationError, match="one character"):
        CsvLoader.Options(path=str(path), delimiter="::")
    with pytest.raises(ValidationError, match="unknown encoding"):
        CsvLoader.Options(path=str(path), encoding="utf-9")


def test_csv_bad_header_stops_with_location(tmp_path: Path) -> None:
    path = tmp_path / "dup.csv"
    path.write_text("a,b,a\n1,2,3\n")
    with pytest.raises(UserError, match=rf"{path}:row 1: the header names column 'a' twice"):
        load(CsvLoader, path=str(path))


def test_csv_reads_fields_over_the_default_limit(tmp_path: Path) -> None:
    path = tmp_path / "long.csv"
    reply = "word " * 60_000  # 300 KB, over csv's 128 KiB default
    path.write_text(f"prompt,response\nsay it,\"{reply}\"\n")
    assert load(CsvLoader, path=str(path))[0].data["response"] == reply


# --- parquet ---------------------------------------------------------------------------


def test_parquet_keeps_types_and_numbers_rows(tmp_path: Path) -> None:
    path = tmp_path / "chat.parquet"
    table = pa.table({
        "messages": [
            [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}],
            [{"role": "user", "content": "2+2?"}, {"role": "assistant", "content": "4"}],
            None,
        ],
    })
    pq.write_table(table, path)
    records = load(ParquetLoader, path=str(path), batch_size=2)
    assert [r.location for r in records] == [f"{path}:row {n}" for n in (1, 2, 3)]
    assert to_messages(records[1].data, "auto", {}) == [
        {"role": "user", "content": "2+2?"}, {"role": "assistant", "content": "4"}]
    assert records[2].data == {"messages": None}


def test_parquet_streams_in_batches(tmp_path: Path) -> None:
    """The first record arrives with a small fraction of the file decoded."""
    path = tmp_path / "big.parquet"
    rows = 20_000
    text = "x" * 200
    table = pa.table({"prompt": [f"{i} {text}" for i in range(rows)],
                      "response": [text] * rows})
    pq.write_table(table, path, row_group_size=1000, compression="none")
    full = table.nbytes
    del table
    before = pa.total_allocated_bytes()
    records = ParquetLoader(ParquetLoader.Options(path=str(path), batch_size=100)).records()
    first = next(records)
    in_use = pa.total_allocated_bytes() - before
    assert first.data["prompt"].startswith("0 ")
    assert in_use < full / 10, (in_use, full)
    assert sum(1 for _ in records) == rows - 1


def test_parquet_rejects_a_file_that_is_not_parquet(tmp_path: Path) -> None:
    path = tmp_path / "fake.parquet"
    path.write_text("a,b\n")
    with pytest.raises(UserError, match="not a readable Parquet file"):
        load(ParquetLoader, path=str(path))


# --- mapping and fingerprints -------------------------------------------------------------


def test_csv_rows_map_through_data_columns(tmp_path: Path) -> None:
    path = tmp_path / "qa.csv"
    path.write_text("question,answer,context\nWhat is 2+2?,4,\nCapital?,Paris,of France\n")
    records = load(CsvLoader, path=str(path))
    columns = {"instruction": "question", "output": "answer", "input": "context"}
    assert to_messages(records[0].data, "auto", columns) == [
        {"role": "user", "content": "What is 2+2?"}, {"role": "assistant", "content": "4"}]
    assert to_messages(records[1].data, "alpaca", columns)[0] == {
        "role": "user", "content": "Capital?\n\nof France"}


def test_fingerprint_follows_bytes_and_options(tmp_path: Path) -> None:
    path = tmp_path / "qa.csv"
    path.write_text("a;b\n1;2\n")
    first = CsvLoader(CsvLoader.Options(path=str(path))).fingerprint()
    assert first == CsvLoader(CsvLoader.Options(path=str(path))).fingerprint()
    assert first != CsvLoader(CsvLoader.Options(path=str(path), delimiter=";")).fingerprint()
    path.write_text("a;b\n1;3\n")
    assert first != CsvLoader(CsvLoader.Options(path=str(path))).fingerprint()
