"""The CLI surface: components, validate, and stages that are not built yet."""

from __future__ import annotations

from pathlib import Path

import pytest

from lorapipe.cli import main

BUILTINS = {
    "loaders": ["jsonl", "hf"],
    "chat_templates": ["tokenizer", "llama3", "llama2"],
    "target_detectors": ["llama", "all_linear"],
    "quantizers": ["nf4", "none"],
    "evaluators": ["perplexity"],
    "exporters": ["gguf"],
}


def test_components_lists_every_builtin(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["components"]) == 0
    out = capsys.readouterr().out
    for kind, names in BUILTINS.items():
        assert kind in out
        for name in names:
            assert f"  {name} " in out, name


def test_components_of_one_kind(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["components", "quantizer"]) == 0
    out = capsys.readouterr().out
    assert "nf4" in out and "jsonl" not in out


def test_components_unknown_kind(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["components", "widgets"]) == 2
    assert "unknown component kind 'widgets'" in capsys.readouterr().err


def test_quickstart_config_validates(repo_root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(repo_root)
    assert main(["validate", "configs/quickstart.yaml"]) == 0
