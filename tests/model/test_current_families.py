"""The late-2026 families end to end: mixture-of-experts (Qwen3-MoE, Qwen3.5-MoE,
gpt-oss, Gemma 4 MoE, Llama 4, DeepSeek-V3), hybrids (Qwen3.5's linear attention, Granite
4's Mamba, LFM2's short convolutions) and the newer dense types, as tiny random-weight
models of their real config shapes (``tests/current_families.py``).

One run per family: prepare, nf4 train, evaluate, merge; then the same data trained and
merged without quantization. merged/ must compute what the
base + adapter does in peft (within 1e-4) in both. The GGUF side of these families is
``tests/export/test_gguf_current_families.py``.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from current_families import FAMILIES, build_family
from datasets import load_from_disk
from merge_judge import merge_errors

from lorapipe.config import validate_config
from lorapipe.context import RunContext
from lorapipe.pipeline import run_one_stage
from lorapipe.plan import build_plan

SAMPLE = Path(__file__).resolve().parents[2] / "configs" / "data" / "quickstart.jsonl"


def _exportable(model_dir: Path) -> bool:
    """Whether the GGUF exporter writes this model (the others it refuses by name:
    tests/export/test_gguf_current_families.py)."""
    from lorapipe.errors import UserError
    from lorapipe.plugins.exporters.gguf.writer import check_model

    try:
        check_model(model_dir)
    except UserError:
        return False
    return True


def _context(model_dir: Path, data: Path, out: Path, quantizer: str) -> RunContext:
    exporters = [{"name": "gguf", "types": ["f16"]}] if _exportable(model_dir) else []
    return RunContext(build_plan(validate_config({
        "model": {"name_or_path": str(model_dir), "quantizer": quantizer},
        "data": {"loader": {"name": "jsonl", "path": str(data)}, "max_length": 96,
                 "validation": {"count": 4}},
        "train": {"max_steps": 2, "micro_batch_size": 4, "gradient_accumulation_steps": 1,
                  "logging_steps": 1, "gradient_checkpointing": False,
                  "learning_rate": 1e-2},  # two steps that move the adapter measurably
        "evaluate": {"evaluators": ["perplexity"]},
        "export": {"exporters": exporters},
        "output_dir": str(out),
    })))


# The suite runs the families whose code paths differ most (a per-expert checkpoint, fused
# (E, in, out) stacks with biases, linear attention with a shared expert, Mamba with
# Granite's own expert names); `pytest -m families tests/model/test_current_families.py`
# runs every family (README, "Model families").
DEFAULT = ("qwen3_moe", "gpt_oss", "qwen3_5_moe", "granitemoehybrid")


@pytest.fixture(scope="module", params=[
    pytest.param(name, marks=() if name in DEFAULT else pytest.mark.families)
    for name in FAMILIES])
def family_runs(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
                ) -> tuple[str, Path, dict[str, RunContext]]:
    family = request.param
    tmp = tmp_path_factory.mktemp(family)
    model_dir = build_family(family, tmp / "model")
    data = tmp / "chats.jsonl"
    data.write_text("".join(SAMPLE.read_text().splitlines(keepends=True)[:32]))
    runs = {"nf4": _context(model_dir, data, tmp / "nf4", "nf4")}
    for stage in ("prepare", "train", "evaluate", "merge", "export"):
        run_one_stage(runs["nf4"], stage)
    runs["none"] = _context(model_dir, data, tmp / "none", "none")
    for stage in ("prepare", "train", "merge"):
        run_one_stage(runs["none"], stage)
    return family, model_dir, runs


@pytest.mark.parametrize("quantizer", ["nf4", "none"])
def test_family_trains_and_merges_exactly(family_runs, quantizer: str) -> None:
    family, model_dir, runs = family_runs
    ctx = runs[quantizer]
    shape = FAMILIES[family]
    report = json.loads(ctx.paths.model_report.read_text())
    assert report["quantizer"]["quantized"] is (quantizer == "nf4")
    assert sorted(report["targets"]["modules"]) == sorted(shape.modules)
    assert sorted(report["targets"]["parameters"]) == sorted(shape.parameters)
    adapted = report["parameters"]["per_target"]
    assert set(adapted) == {*shape.modules, *shape.parameters}  # each really got adapters
    losses = [json.loads(line)["loss"] for line in ctx.paths.metrics.read_text().splitlines()
              if '"loss"' in line]
    assert len(losses) == 2 and all(torch.isfinite(torch.tensor(losses)))

    ids = list(load_from_disk(str(ctx.paths.validation_data))[0]["input_ids"])
    error, change = merge_errors(model_dir, ctx.paths.adapter, ctx.paths.merged, ids)
    assert error < 1e-4
    assert change > 1e-4  # the adapter changed the model
    merge_report = json.loads((ctx.paths.merged / "lorapipe_merge.json").read_text())
    assert merge_report["max_abs_logit_diff_vs_adapter"] < 1e-4


def test_the_trained_family_exports_a_gguf_llama_cpp_runs_like_transformers(
        family_runs) -> None:
    """From the trained run's merged/ (for a MoE: the merge's per-expert checkpoint), the
    f16 GGUF computes what transformers computes on merged/."""
    import numpy as np
    from llama_cpp_material import cpp_logits
    from transformers import AutoModelForCausalLM

    family, _, runs = family_runs
    ctx = runs["nf4"]
    gguf = ctx.paths.export_dir("gguf") / "model-f16.gguf"
    if not _exportable(ctx.paths.merged):
        pytest.skip(f"{family}: refused by the GGUF exporter (see the README's table)")
    ids = list(load_from_disk(str(ctx.paths.validation_data))[0]["input_ids"])
    merged = AutoModelForCausalLM.from_pretrained(ctx.paths.merged, dtype=torch.float32)
    with torch.no_grad():
        hf = merged.eval()(torch.tensor([ids])).logits[0].numpy()
    ours = cpp_logits(gguf, ids)
    assert np.abs(ours - hf).max() < 0.02 * hf.std() + 1e-3, np.abs(ours - hf).max()


def test_family_is_evaluated_against_its_base(family_runs) -> None:
    _, _, runs = family_runs
    perplexity = json.loads(runs["nf4"].paths.eval_report.read_text())["perplexity"]
    base, tuned = perplexity["base"], perplexity["finetuned"]
    assert base and set(base) == set(tuned)
    assert all(v is None or v > 0 for v in [*base.values(), *tuned.values()])
    assert base != tuned and perplexity["tokens"]["response"] > 0


def test_an_nf4_moe_run_resumed_gives_the_identical_adapter(tmp_path: Path, capsys) -> None:
    """Resuming a Qwen3-MoE QLoRA run from a checkpoint (expert LoRA, dropout on the linear
    layers) ends with the adapter the uninterrupted run wrote, bit for bit."""
    from safetensors.torch import load_file

    model_dir = build_family("qwen3_moe", tmp_path / "model")
    data = tmp_path / "chats.jsonl"
    data.write_text("".join(SAMPLE.read_text().splitlines(keepends=True)[:32]))
    ctx = _context(model_dir, data, tmp_path / "run", "nf4")
    train = {**ctx.config.train.model_dump(), "max_steps": 4, "save_steps": 2, "eval_steps": 2}
    config = ctx.config.model_copy(update={"train": type(ctx.config.train)(**train)})
    ctx = RunContext(build_plan(config))
    for stage in ("prepare", "train"):
        run_one_stage(ctx, stage)
    whole = load_file(ctx.paths.adapter / "adapter_model.safetensors")
    assert any("experts" in key for key in whole)
    shutil.rmtree(ctx.paths.checkpoints / "step-4")  # as if stopped after step 2
    shutil.rmtree(ctx.paths.adapter)
    capsys.readouterr()
    run_one_stage(RunContext(build_plan(config), resume=True), "train")
    assert "(step 2/4)" in capsys.readouterr().out  # continued, not started again
    resumed = load_file(ctx.paths.adapter / "adapter_model.safetensors")
    assert whole.keys() == resumed.keys()
    assert all(torch.equal(whole[key], resumed[key]) for key in whole)
