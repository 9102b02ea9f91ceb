"""The onnx exporter, judged by onnxruntime against transformers in the test itself.

Two model shapes: tiny-llama through the pipeline's export stage, and a tiny random
Qwen2 (q/k/v biases, set non-zero) through the exporter directly. Each exported graph
runs batches the export never saw — other lengths, a batch of one and of three, rows
left-padded by different amounts, tokenized by the tokenizer copied beside the graph.
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import numpy as np
import onnxruntime
import pytest
import torch
from lorapipe_onnx import convert
from lorapipe_onnx.exporter import OnnxExporter, OnnxOptions
from transformers import AutoModelForCausalLM, AutoTokenizer, Qwen2Config

from lorapipe.config import validate_config
from lorapipe.context import RunContext
from lorapipe.errors import ConfigError, UserError
from lorapipe.export import run_stage
from lorapipe.manifest import require_intact, write_manifest
from lorapipe.model.source import resolve_model_path
from lorapipe.plan import build_plan

SAMPLE = Path(__file__).resolve().parents[3] / "configs" / "data" / "quickstart.jsonl"
TEXTS = ["Hi", "The quick brown fox jumps over the lazy dog.",
         "Numbers: 7 42 12345 3.14159, and a longer tail of words to pad the others out."]


def _config(tmp_path: Path, exporter: dict) -> dict:
    return {"model": {"name_or_path": "tiny-llama"},
            "data": {"loader": {"name": "jsonl", "path": str(SAMPLE)}},
            "export": {"exporters": [exporter]},
            "output_dir": str(tmp_path / "run")}


@pytest.fixture(scope="module")
def tiny_dir() -> Path:
    return Path(resolve_model_path("tiny-llama"))


@pytest.fixture(scope="module")
def stage_run(tiny_dir: Path, tmp_path_factory: pytest.TempPathFactory):
    """The export stage on a merged/ that is tiny-llama, as test_gguf.py runs it."""
    ctx = RunContext(build_plan(validate_config(_config(tmp_path_factory.mktemp("stage"),
                                                        {"name": "onnx"}))))
    shutil.copytree(tiny_dir, ctx.paths.merged)
    write_manifest(ctx.paths.merged)  # as the merge stage does
    return ctx, run_stage(ctx)


@pytest.fixture(scope="module")
def qwen2_dir(tiny_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A seeded tiny Qwen2 with tiny-llama's tokenizer; its biases made non-zero, since
    transformers initializes them to zero and a dropped bias would go unnoticed."""
    out = tmp_path_factory.mktemp("qwen2")
    config = Qwen2Config(vocab_size=2048, hidden_size=64, intermediate_size=128,
                         num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                         max_position_embeddings=512, pad_token_id=2044)
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.endswith("proj.bias"):
                param.normal_(0, 0.5)
    model.save_pretrained(out)
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(tiny_dir / name, out / name)
    return out


@pytest.fixture(scope="module")
def qwen2_export(qwen2_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("qwen2-export") / "onnx"
    OnnxExporter().export(qwen2_dir, out, None)
    return out


def test_export_stage_writes_the_serving_directory(stage_run) -> None:
    ctx, summary = stage_run
    out = ctx.paths.export_dir("onnx")
    listed = [out / "model.onnx", out / "verification.json"]
    assert summary["artifacts"] == [{"exporter": "onnx", "path": str(p), "bytes": p.stat().st_size}
                                    for p in listed]
    assert {p.name for p in out.iterdir()} == {
        "model.onnx", "verification.json", "config.json", "generation_config.json",
        "tokenizer.json", "tokenizer_config.json", "manifest.json"}
    require_intact(out, "export again")
    report = json.loads((out / "verification.json").read_text())
    assert 0 < report["max_abs_logit_diff"] < report["tolerance"] == 1e-3
    assert not list(out.parent.glob(".*"))  # no temp directory left behind


def _left_padded(model_dir: Path, texts: list[str]) -> dict[str, np.ndarray]:
    """The graph's inputs as the README tells a user to build them."""
    tokenizer = AutoTokenizer.from_pretrained(model_dir, padding_side="left")
    batch = tokenizer(texts, return_tensors="np", padding=True)
    mask = batch["attention_mask"]
    return {"input_ids": batch["input_ids"], "attention_mask": mask,
            "position_ids": np.where(mask == 1, mask.cumsum(-1) - 1, 1)}


@pytest.mark.parametrize("family", ["tiny-llama", "qwen2"])
def test_onnxruntime_logits_match_transformers(family: str, request: pytest.FixtureRequest,
                                               tiny_dir: Path) -> None:
    if family == "tiny-llama":
        source, out = tiny_dir, request.getfixturevalue("stage_run")[0].paths.export_dir("onnx")
    else:
        source, out = request.getfixturevalue("qwen2_dir"), request.getfixturevalue("qwen2_export")
    session = onnxruntime.InferenceSession(str(out / "model.onnx"),
                                           providers=["CPUExecutionProvider"])
    model = AutoModelForCausalLM.from_pretrained(source, dtype=torch.float32).eval()
    # exported with batch 2 at length 8: other batch sizes and lengths, padding, one token
    batches = [_left_padded(out, TEXTS), _left_padded(out, TEXTS[1:2]),
               _left_padded(out, [""])]
    assert 8 not in {b["input_ids"].shape[1] for b in batches}
    assert batches[2]["input_ids"].shape == (1, 1)  # the BOS token alone
    for feed in batches:
        (got,) = session.run(["logits"], feed)
        with torch.no_grad():
            expected = model(**{k: torch.from_numpy(v) for k, v in feed.items()}).logits.numpy()
        real = feed["attention_mask"].astype(bool)
        assert np.abs(got - expected)[real].max() < 1e-4
    # with position_ids, a left-padded row scores its tokens as it would alone
    (padded,) = session.run(["logits"], batches[0])
    (alone,) = session.run(["logits"], batches[1])
    n = alone.shape[1]
    assert np.abs(padded[1, -n:] - alone[0]).max() < 1e-4


def test_failed_verification_exports_nothing(qwen2_dir: Path, qwen2_export: Path,
                                             tmp_path: Path,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    """The real check on the real graph (copied in, not exported again), held to a
    tolerance no float32 graph meets."""
    def copy_graph(model: object, path: Path, opset: int) -> list[Path]:
        shutil.copy(qwen2_export / "model.onnx", path)
        return [path]

    monkeypatch.setattr(convert, "write_onnx", copy_graph)
    exporter = OnnxExporter(OnnxOptions(tolerance=1e-12), field="export.exporters.0")
    with pytest.raises(UserError, match=r"export\.exporters\.0: onnxruntime's logits differ "
                                        r"from transformers' by up to .*tolerance 1e-12"):
        exporter.export(qwen2_dir, tmp_path / "onnx", None)
    assert list(tmp_path.iterdir()) == []


def test_weights_in_an_external_file_travel_with_the_graph(
        qwen2_dir: Path, qwen2_export: Path, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Past 1.5 GB torch writes the weights to ``model.onnx.data``; here the exported graph
    is re-saved that way (too big a model to export in a test) and exported again."""
    import onnx

    def external_graph(model: object, path: Path, opset: int) -> list[Path]:
        onnx.save_model(onnx.load(qwen2_export / "model.onnx"), path,
                        save_as_external_data=True, location="model.onnx.data")
        return sorted(path.parent.glob(f"{path.name}*"))

    monkeypatch.setattr(convert, "write_onnx", external_graph)
    out = tmp_path / "onnx"
    written = OnnxExporter().export(qwen2_dir, out, None)
    assert written == [out / "model.onnx", out / "model.onnx.data", out / "verification.json"]
    assert (out / "model.onnx.data").stat().st_size > (out / "model.onnx").stat().st_size
    session = onnxruntime.InferenceSession(str(out / "model.onnx"))  # finds the data beside it
    assert session.get_outputs()[0].name == "logits"


def test_check_names_the_missing_package(tiny_dir: Path,
                                         monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # find_spec: not installed
    with pytest.raises(ConfigError, match="needs onnxruntime.*pip install onnxruntime"):
        OnnxExporter().check(tiny_dir)


def test_check_refuses_what_is_not_a_causal_lm(tiny_dir: Path, tmp_path: Path) -> None:
    shutil.copytree(tiny_dir, tmp_path / "model")
    config = json.loads((tiny_dir / "config.json").read_text())
    (tmp_path / "model" / "config.json").write_text(
        json.dumps({**config, "architectures": ["LlamaForSequenceClassification"]}))
    with pytest.raises(ConfigError, match="LlamaForSequenceClassification.*causal"):
        OnnxExporter().check(tmp_path / "model")


@pytest.mark.parametrize("opset", [17, 24])
def test_opset_outside_what_torch_writes_is_refused_by_validate(opset: int,
                                                                tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"export\.exporters\.0\.opset"):
        build_plan(validate_config(_config(tmp_path, {"name": "onnx", "opset": opset})))
