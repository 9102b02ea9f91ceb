"""``lorapipe inspect``: the prepared samples, trained tokens highlighted, counts true."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from datasets import load_from_disk
from rich.console import Console
from transformers import AutoTokenizer

from lorapipe.artifacts import RunPaths
from lorapipe.cli import main
from lorapipe.data.inspect import show_samples

SAMPLE = Path(__file__).resolve().parents[2] / "configs" / "data" / "quickstart.jsonl"
BOLD_GREEN, DIM = "\x1b[1;32m", "\x1b[2m"


@pytest.fixture(scope="module")
def prepared(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("inspect")
    config = root / "run.yaml"
    config.write_text(yaml.safe_dump({
        "model": {"name_or_path": "tiny-llama"},
        "data": {"loader": {"name": "jsonl", "path": str(SAMPLE)}, "test": {"fraction": 0.1}},
        "output_dir": str(root / "run"),
    }))
    assert main(["prepare", str(config)]) == 0
    return config, root / "run"


def test_each_sample_shows_its_trained_tokens_highlighted(prepared: tuple[Path, Path]) -> None:
    _, run = prepared
    paths = RunPaths(run)
    console = Console(record=True, width=10_000, force_terminal=True, color_system="standard",
                      highlight=False)
    assert show_samples(paths, console, count=2, start=1) == 2
    shown = console.export_text(styles=True)
    data = load_from_disk(str(paths.train_data))
    tokenizer = AutoTokenizer.from_pretrained(str(paths.tokenizer))
    for index in (1, 2):
        ids, labels = data[index]["input_ids"], data[index]["labels"]
        trained = [token for token, label in zip(ids, labels, strict=True) if label != -100]
        assert f"train sample {index}: {len(trained)} of {len(ids)} tokens trained" in shown
        for token, label in zip(ids, labels, strict=True):
            piece = tokenizer.decode([token]).replace(" ", "·").replace("\n", "↵\n")
            style = BOLD_GREEN if label != -100 else DIM
            first_line = piece.split("\n")[0]  # the terminal restyles each line
            assert f"{style}{first_line}" in shown, (piece, label)
    assert "train sample 0:" not in shown and "train sample 3:" not in shown
    # what trains is part of the conversation, and not all of it (the last sample shown)
    reply = tokenizer.decode(trained)
    assert reply.strip() and reply in tokenizer.decode(ids) and len(trained) < len(ids)


def test_ids_and_other_splits_from_the_command(prepared: tuple[Path, Path], capsys) -> None:  # noqa: ANN001
    config, run = prepared
    assert main(["inspect", str(config), "--split", "test", "--count", "1", "--ids"]) == 0
    out = capsys.readouterr().out
    first = load_from_disk(str(RunPaths(run).test_data))[0]["input_ids"]
    assert "test sample 0:" in out
    assert all(f"({token})" in out for token in first)


def test_what_cannot_be_shown_is_one_clear_line(prepared: tuple[Path, Path], tmp_path: Path,
                                               capsys) -> None:  # noqa: ANN001
    config, _ = prepared
    assert main(["inspect", str(config), "--start", "100000"]) == 2
    assert "the train split has" in capsys.readouterr().err
    assert main(["inspect", str(config), "--set", f"output_dir={tmp_path / 'none'}"]) == 2
    assert "run `lorapipe prepare CONFIG` first" in capsys.readouterr().err
