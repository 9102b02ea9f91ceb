"""A run directory whose checkpoint ships its own code (``auto_map`` and a ``.py``) runs
none of it unless model.trust_remote_code says so, even with ``y`` piped on stdin.

transformers asks "[y/N]" on stdin before running such code when ``trust_remote_code``
is left out, so every load passes it explicitly; ``False`` makes transformers refuse,
which every command turns into one line naming the field (exit 2). The planted code
writes a marker file when imported; the manifests are rewritten to match, so
``trust_remote_code`` is the only defence under test. The controls show the same planted
code does run where it is trusted, or where transformers is left to ask.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from lorapipe.cli import main
from lorapipe.manifest import write_manifest

REPO = Path(__file__).resolve().parents[2]
# Planted where each load looks: merged/ as a model of an unknown type that only its own
# code defines (chat, the onnx exporter); merged/ as a llama whose tokenizer is its own
# code (the gguf exporter); data/tokenizer/ (inspect, chat, evaluate, merge).
PLANTS = {"merged": "merged", "merged-tokenizer": "merged", "tokenizer": "data/tokenizer"}
MANIFESTED = {"merged": "merged", "merged-tokenizer": "merged", "tokenizer": "data"}

EVIL = '''from pathlib import Path

Path({marker!r}).write_text("the planted code ran")

from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast


class EvilConfig(LlamaConfig):
    model_type = "evil"


class EvilModel(LlamaForCausalLM):
    config_class = EvilConfig


class EvilTokenizer(PreTrainedTokenizerFast):
    pass
'''


def _edit_json(path: Path, **changes: object) -> None:
    path.write_text(json.dumps({**json.loads(path.read_text()), **changes}))


def plant(run: Path, kind: str, marker: Path) -> Path:
    """Custom code in ``run``'s ``PLANTS[kind]`` directory, its manifest rewritten to match;
    returns that directory."""
    where = run / PLANTS[kind]
    (where / "evil.py").write_text(EVIL.format(marker=str(marker)))
    if kind in ("merged", "merged-tokenizer"):
        _edit_json(where / "config.json",
                   model_type="evil" if kind == "merged" else "llama",
                   auto_map={"AutoConfig": "evil.EvilConfig",
                             "AutoModelForCausalLM": "evil.EvilModel"})
    if kind in ("merged-tokenizer", "tokenizer"):
        _edit_json(where / "tokenizer_config.json", tokenizer_class="EvilTokenizer",
                   auto_map={"AutoTokenizer": [None, "evil.EvilTokenizer"]})
    write_manifest(run / MANIFESTED[kind])
    return where


@pytest.fixture
def run_copy(finished_run: Path, tmp_path: Path) -> Path:
    run = tmp_path / "run"
    shutil.copytree(finished_run, run)
    return run


def _config(run: Path, **sections: object) -> Path:
    """The run's resolved config, pointing at the copy (data paths made absolute)."""
    config = yaml.safe_load((run / "config.resolved.yaml").read_text())
    config["output_dir"] = str(run)
    loader = config["data"]["loader"]
    loader["path"] = [str(REPO / p) for p in loader["path"]]
    config.update(sections)
    path = run.parent / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def _one_line_refusal(code: int, err: str) -> None:
    assert code == 2, err[-3000:]
    assert "Traceback" not in err
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, err[-3000:]
    assert errors[0].startswith("error: model.trust_remote_code:"), errors[0]
    assert "model.trust_remote_code: true" in errors[0]


def test_chat_with_y_piped_on_stdin_runs_no_code(run_copy: Path, tmp_path: Path) -> None:
    """The reported hole: ``echo y | lorapipe chat RUN`` on a merged/ with its own code."""
    marker = tmp_path / "marker"
    plant(run_copy, "merged", marker)
    env = {**os.environ, "HF_MODULES_CACHE": str(tmp_path / "hf-modules")}
    result = subprocess.run(
        [sys.executable, "-m", "lorapipe.cli", "chat", str(run_copy), "--prompt", "hi"],
        input="y\n" * 8, capture_output=True, text=True, cwd=REPO, env=env, timeout=300,
        check=False)
    _one_line_refusal(result.returncode, result.stderr)
    assert "[y/N]" not in result.stdout + result.stderr  # nobody was asked
    assert not marker.exists()


@pytest.mark.parametrize(("command", "kind"), [
    ("chat", "tokenizer"),
    ("inspect", "tokenizer"),
    ("evaluate", "tokenizer"),
    ("merge", "tokenizer"),
    ("export-gguf", "merged-tokenizer"),
    ("export-onnx", "merged"),
])
def test_a_command_runs_no_code_of_the_run(command: str, kind: str, run_copy: Path,
                                           tmp_path: Path, capsys, monkeypatch) -> None:  # noqa: ANN001
    """Each command that loads merged/ or data/tokenizer/, with ``y`` ready on stdin (in
    this process: a subprocess each would spend ~10 s importing torch)."""
    import transformers.dynamic_module_utils as dynamic

    marker = tmp_path / "marker"
    plant(run_copy, kind, marker)
    # were the code imported after all, its copy would go here rather than to ~/.cache
    monkeypatch.setattr(dynamic, "HF_MODULES_CACHE", str(tmp_path / "hf-modules"))
    monkeypatch.setattr(sys, "stdin", io.StringIO("y\n" * 8))
    if command == "chat":
        argv = ["chat", str(run_copy), "--prompt", "hi"]
    elif command == "export-onnx":
        pytest.importorskip("lorapipe_onnx")
        argv = ["export", str(_config(run_copy, export={"exporters": [{"name": "onnx"}]}))]
    else:
        argv = [command.removesuffix("-gguf"), str(_config(run_copy))]
    code = main(argv)
    captured = capsys.readouterr()
    _one_line_refusal(code, captured.err)
    assert "[y/N]" not in captured.out + captured.err
    assert not marker.exists()


CONTROL = """
import sys
from transformers import AutoModelForCausalLM, AutoTokenizer

auto = {"AutoModelForCausalLM": AutoModelForCausalLM, "AutoTokenizer": AutoTokenizer}
for name, path, trust in (line.split("|") for line in sys.argv[1:]):
    kwargs = {} if trust == "ask" else {"trust_remote_code": True}
    try:
        auto[name].from_pretrained(path, **kwargs)
    except Exception as err:  # only the marker counts
        print(f"{path}: {type(err).__name__}: {err}", file=sys.stderr)
"""


def test_the_planted_code_runs_where_trusted_or_asked(finished_run: Path,
                                                      tmp_path: Path) -> None:
    """The controls: each plant's code runs with trust_remote_code=True, and with it left
    out and ``y`` on stdin (what ``lorapipe chat`` did), so the tests above can fail."""
    loads, markers = [], []
    for kind, auto in (("merged", "AutoModelForCausalLM"), ("merged-tokenizer", "AutoTokenizer"),
                       ("tokenizer", "AutoTokenizer")):
        for trust in ("true", "ask"):
            run = tmp_path / f"{kind}-{trust}"
            (run / PLANTS[kind]).parent.mkdir(parents=True)
            shutil.copytree(finished_run / PLANTS[kind], run / PLANTS[kind])
            marker = tmp_path / f"{kind}-{trust}.marker"
            loads.append(f"{auto}|{plant(run, kind, marker)}|{trust}")
            markers.append(marker)
    env = {**os.environ, "HF_MODULES_CACHE": str(tmp_path / "hf-modules")}
    result = subprocess.run([sys.executable, "-c", CONTROL, *loads], input="y\n" * 20,
                            capture_output=True, text=True, env=env, timeout=300, check=False)
    assert result.returncode == 0, result.stderr[-3000:]
    assert [m.name for m in markers if not m.exists()] == [], result.stderr[-3000:]
