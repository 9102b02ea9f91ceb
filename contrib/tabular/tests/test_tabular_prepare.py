"""`lorapipe prepare` on csv, json and parquet files, with data.columns mapping."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml
from datasets import load_from_disk

from lorapipe.context import RunContext
from lorapipe.pipeline import run_one_stage
from lorapipe.plan import load_plan
from lorapipe.registry import get_registry

ROWS = [{"question": f"What is {i} plus {i}?", "answer": f"{i} plus {i} is {2 * i}."}
        for i in range(12)]


def write(kind: str, tmp_path: Path) -> dict:
    if kind == "csv":
        path = tmp_path / "qa.csv"
        lines = ["question,answer"] + [f"{r['question']},{r['answer']}" for r in ROWS]
        lines.insert(4, "broken,row,here")  # row 5
        path.write_text("\n".join(lines) + "\n")
        return {"name": "csv", "path": str(path)}
    if kind == "json":
        path = tmp_path / "qa.json"
        path.write_text(json.dumps({"data": ROWS[:3] + ["not an object"] + ROWS[3:]}))
        return {"name": "json", "path": str(path), "field": "data"}
    path = tmp_path / "qa.parquet"
    pq.write_table(pa.table({"question": [r["question"] for r in ROWS] + [None],
                             "answer": [r["answer"] for r in ROWS] + ["orphan"]}), path)
    return {"name": "parquet", "path": str(path), "batch_size": 5}


@pytest.mark.parametrize("kind", ["csv", "json", "parquet"])
def test_prepare_maps_columns_and_counts_bad_rows(kind: str, tmp_path: Path) -> None:
    out = tmp_path / "run"
    config = {
        "model": {"name_or_path": "tiny-llama"},
        "data": {"loader": write(kind, tmp_path), "format": "alpaca",
                 "columns": {"instruction": "question", "output": "answer"},
                 "validation": {"count": 2}},
        "output_dir": str(out),
    }
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    registry = get_registry()
    run_one_stage(RunContext(load_plan(path, registry=registry)), "prepare")

    report = json.loads((out / "data" / "report.json").read_text())
    assert report["records_read"] == 13
    assert report["kept"] == 12
    (reason, [example]), = report["examples"].items()
    expected = {"csv": ("malformed_csv", "qa.csv:row 5"),
                "json": ("wrong_type", "qa.json:item 4"),
                "parquet": ("wrong_type", "qa.parquet:row 13")}[kind]
    assert reason == expected[0] and example["location"].endswith(expected[1])
    train = load_from_disk(str(out / "data" / "train"))
    assert len(train) == 10
    tokenizer_dir = out / "data" / "tokenizer"
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    row = train[0]
    reply = tokenizer.decode([t for t, label in zip(row["input_ids"], row["labels"], strict=True)
                              if label != -100])
    assert any(reply.startswith(r["answer"]) for r in ROWS)
