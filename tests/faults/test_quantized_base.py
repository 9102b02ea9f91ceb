"""A base stored quantized (gpt-oss ships its experts in MXFP4; FP8 and GPTQ releases
exist) is refused before any work — no run directory, no prepared data — with the
transformers call that dequantizes it, instead of after hours of training at merge."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import yaml

from lorapipe.cli import main
from lorapipe.model.source import resolve_model_path

SAMPLE = Path(__file__).resolve().parents[2] / "configs" / "data" / "quickstart.jsonl"


@pytest.mark.parametrize(("method", "fix"), [
    ("mxfp4", "Mxfp4Config(dequantize=True)"),
    ("fp8", "FineGrainedFP8Config(dequantize=True)"),
    ("gptq", "unquantized checkpoint"),
])
@pytest.mark.parametrize("command", ["run", "train"])
def test_a_quantized_base_is_refused_before_any_work(tmp_path: Path, capsys, method: str,
                                                     fix: str, command: str) -> None:
    model = shutil.copytree(resolve_model_path("tiny-llama"), tmp_path / "gpt-oss-ish")
    config = json.loads((model / "config.json").read_text())
    config["quantization_config"] = {"quant_method": method}
    (model / "config.json").write_text(json.dumps(config))
    run = tmp_path / "run"
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump({
        "model": {"name_or_path": str(model)},
        "data": {"loader": {"name": "jsonl", "path": str(SAMPLE)}, "max_length": 64},
        "output_dir": str(run),
    }))
    assert main([command, str(path)]) == 2
    err = capsys.readouterr().err
    assert f"stored quantized ({method})" in err and fix in err and "Traceback" not in err
    assert not (run / "data").exists()
