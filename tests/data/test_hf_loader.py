"""The ``hf`` loader on every kind of local dataset ``datasets`` opens (no network here)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import datasets
import pytest
import yaml
from datasets import load_from_disk
from prepare_helpers import read_report, write_jsonl

from lorapipe.errors import ConfigError
from lorapipe.plugins.loaders.hf import HfLoader, HfOptions

ROWS = [{"instruction": f"What is {i} squared?", "response": f"It is {i * i}."} for i in range(12)]


@pytest.fixture(autouse=True)
def datasets_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """``load_dataset`` caches what it builds; keep that out of ~/.cache."""
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "hf-cache")


def rows_of(**options: Any) -> list[dict[str, Any]]:
    loader = HfLoader(HfOptions(**options), field="data.loader")
    return [record.data for record in loader.records()]


def test_a_save_to_disk_directory_and_its_splits(tmp_path: Path) -> None:
    saved = tmp_path / "saved"
    datasets.DatasetDict({"train": datasets.Dataset.from_list(ROWS[:8]),
                          "test": datasets.Dataset.from_list(ROWS[8:])}).save_to_disk(saved)
    assert rows_of(dataset=str(saved)) == ROWS[:8]
    assert rows_of(dataset=str(saved), split="test") == ROWS[8:]
    assert rows_of(dataset=str(saved), split="test", streaming=True) == ROWS[8:]
    with pytest.raises(ConfigError, match=r"data\.loader\.split: .* no split 'dev'; it has"):
        rows_of(dataset=str(saved), split="dev")


def test_a_local_dataset_directory_with_subsets(tmp_path: Path) -> None:
    # A hub dataset repository's layout: data files, and subsets declared in README.md.
    repo = tmp_path / "repo"
    repo.mkdir()
    write_jsonl(repo / "easy.jsonl", ROWS[:5])
    write_jsonl(repo / "hard.jsonl", ROWS[5:])
    configs = [{"config_name": name, "data_files": [{"split": "train", "path": f"{name}.jsonl"}]}
               for name in ("easy", "hard")]
    (repo / "README.md").write_text(f"---\n{yaml.safe_dump({'configs': configs})}---\n")
    assert rows_of(dataset=str(repo), subset="hard") == ROWS[5:]
    assert rows_of(dataset=str(repo), subset="easy", streaming=True) == ROWS[:5]


def test_a_builder_with_data_files(tmp_path: Path) -> None:
    data = tmp_path / "rows.csv"
    data.write_text("instruction,response\n" + "".join(
        f"{row['instruction']},{row['response']}\n" for row in ROWS))
    assert rows_of(dataset="csv", data_files=str(data)) == ROWS


def test_the_fingerprint_follows_the_data(tmp_path: Path) -> None:
    saved = tmp_path / "saved"
    datasets.Dataset.from_list(ROWS).save_to_disk(saved)
    loader = HfLoader(HfOptions(dataset=str(saved)))
    first = loader.fingerprint()
    assert first == HfLoader(HfOptions(dataset=str(saved))).fingerprint()
    assert HfLoader(HfOptions(dataset=str(saved), split="train",
                              streaming=True)).fingerprint() is None
    other = tmp_path / "other"
    datasets.Dataset.from_list(ROWS[:-1]).save_to_disk(other)
    assert HfLoader(HfOptions(dataset=str(other))).fingerprint() != first


def test_prepare_maps_rows_and_counts_bad_ones_with_their_row(
        tmp_path: Path, prepare: Any) -> None:
    rows = [{**row, "conversation_id": None} for row in ROWS]
    rows[3] = {"instruction": "No answer here", "response": None, "conversation_id": None}
    saved = tmp_path / "saved"
    datasets.Dataset.from_list(rows).save_to_disk(saved)
    _, out = prepare(None, loader={"name": "hf", "dataset": str(saved)},
                     validation={"count": 2})
    report = read_report(out)
    assert report["records_read"] == 12 and report["dropped"] == {"wrong_type": 1}
    [dropped] = [json.loads(line) for line in (out / "data" / "dropped.jsonl").open()]
    assert dropped["location"] == f"{saved}[train]:row 4"
    train = load_from_disk(str(out / "data" / "train"))
    assert len(train) == 9 and train[0]["source"].startswith(f"{saved}[train]:row ")


def test_a_dataset_that_cannot_be_opened_is_a_config_error(tmp_path: Path) -> None:
    config = tmp_path / "c.yaml"
    config.write_text(yaml.safe_dump({
        "model": {"name_or_path": "tiny-llama"}, "output_dir": str(tmp_path / "run"),
        "data": {"loader": {"name": "hf", "dataset": "nobody/no-such-dataset"}}}))
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_CACHE": str(tmp_path / "c")}
    done = subprocess.run([sys.executable, "-m", "lorapipe.cli", "prepare", str(config)],
                          capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 2, done.stderr
    assert "data.loader.dataset: datasets cannot open 'nobody/no-such-dataset'" in done.stderr
    assert "Traceback" not in done.stderr
