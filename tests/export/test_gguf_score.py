"""The gguf exporter's ``score`` option: each shipped file's response perplexity, run by
llama.cpp on the held-out split, beside merged/'s — with a threshold that warns or fails."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import pytest
import torch
import yaml
from datasets import load_from_disk
from gguf import GGUFReader
from pydantic import ValidationError
from transformers import AutoModelForCausalLM

from lorapipe.artifacts import RunPaths
from lorapipe.cli import main
from lorapipe.evaluate.nll import token_nll
from lorapipe.plugins.exporters.gguf.exporter import GgufOptions
from lorapipe.plugins.exporters.gguf.score import Samples, gguf_perplexity, merged_perplexity


def test_merged_perplexity_is_the_evaluate_stages(finished_run: Path) -> None:
    """The scorer's NLL, checked against the evaluate stage's own implementation."""
    samples = Samples.held_out(RunPaths(finished_run), limit=12)
    assert samples.split == "test" and len(samples.rows) == 12
    model = AutoModelForCausalLM.from_pretrained(finished_run / "merged", dtype=torch.float32)
    data = load_from_disk(str(finished_run / "data" / "test")).select(range(12))
    totals = token_nll(model, data, batch_size=4, pad_id=0)
    expected = math.exp(totals.nll["response"] / totals.tokens["response"])
    merged = merged_perplexity(finished_run / "merged", samples, trust_remote_code=False)
    assert merged == pytest.approx(expected, rel=1e-5)
    # llama.cpp's q8_0 file is close to merged/ (q8_0 is near lossless) but not equal
    shipped = gguf_perplexity(finished_run / "export/gguf/model-q8_0.gguf", samples)
    assert shipped != expected and abs(shipped / expected - 1) < 0.05


def _export(run: Path, tmp_path: Path, score: dict, capsys: pytest.CaptureFixture[str],
            **options: object) -> tuple[int, str]:
    config = yaml.safe_load((run / "config.resolved.yaml").read_text())
    config["output_dir"] = str(run)
    config["export"]["exporters"][0].update(types=["q8_0", "q4_0"], score=score, **options)
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    code = main(["export", str(path)])
    return code, capsys.readouterr().err


def test_export_scores_each_file_and_its_threshold_fails_the_run(
        finished_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run = tmp_path / "run"
    shutil.copytree(finished_run, run)
    code, err = _export(run, tmp_path, {"max_samples": 16}, capsys, adapter=["f16"])
    assert code == 0, err
    # the adapter alone, for llama.cpp's --lora (judged in test_gguf_adapter.py)
    adapter = GGUFReader(run / "export/gguf/adapter-f16.gguf")
    assert bytes(adapter.fields["general.type"].parts[-1]) == b"adapter"
    scores = json.loads((run / "export/gguf/scores.json").read_text())
    assert scores["split"] == "test" and set(scores["files"]) == {"model-q8_0.gguf",
                                                                  "model-q4_0.gguf"}
    for scored in scores["files"].values():  # a few percent at most, either way, here
        assert scored["increase"] != 0 and abs(scored["increase"]) < 0.05
    stages = json.loads((run / "run.json").read_text())["stages"]
    assert stages["export"]["summary"]["scores"]["gguf"] == scores

    code, err = _export(run, tmp_path, {"max_samples": 16, "max_increase": 1e-9,
                                        "on_exceed": "fail"}, capsys)
    assert code == 2
    assert "export.exporters.0.score: response perplexity on the test split rose more " \
           "than 0%" in err
    exceeded = json.loads((run / "export/gguf/scores.json").read_text())["exceeded"]
    message = err[err.index("error: "):]
    assert exceeded and all(f"{name} +" in message for name in exceeded)
    assert "Traceback" not in err


def test_scoring_without_llama_cpp_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "llama_cpp" else real(name, *a))
    with pytest.raises(ValidationError, match=r"pip install 'lorapipe\[llama-cpp\]'"):
        GgufOptions(score={})
    assert GgufOptions().score is None  # no scoring, no llama.cpp needed
