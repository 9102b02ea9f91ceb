"""The merge stage, judged by transformers (loads merged/) and peft (loads adapter/)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from peft import PeftModel
from transformers import AutoModelForCausalLM, AutoTokenizer

from lorapipe.errors import UserError
from lorapipe.manifest import write_manifest
from lorapipe.merge import run_stage
from lorapipe.merge.stage import MERGE_REPORT
from lorapipe.model.source import resolve_model_path

IDS = [[2042, 100, 200, 300, 400, 500, 600, 700], [2042, 5, 6, 7, 8]]


def _logits(model, ids: list[int]) -> torch.Tensor:
    with torch.no_grad():
        return model(torch.tensor([ids])).logits[0]


def test_merged_model_gives_base_plus_adapter_logits(adapter_run) -> None:
    summary = run_stage(adapter_run)
    merged_dir = adapter_run.paths.merged

    merged = AutoModelForCausalLM.from_pretrained(merged_dir, dtype=torch.float32)
    base = AutoModelForCausalLM.from_pretrained(resolve_model_path("tiny-llama"),
                                                dtype=torch.float32)
    base_logits = [_logits(base, ids) for ids in IDS]
    with_adapter = PeftModel.from_pretrained(base, adapter_run.paths.adapter)
    for ids, plain in zip(IDS, base_logits, strict=True):
        expected, got = _logits(with_adapter, ids), _logits(merged, ids)
        assert (got - expected).abs().max() < 1e-4
        assert (got - plain).abs().max() > 1e-2  # the adapter really changed the model

    report = json.loads((merged_dir / MERGE_REPORT).read_text())
    assert report["dtype"] == "fp32"
    assert report["max_abs_logit_diff_vs_adapter"] < 1e-4
    # the 4-bit training-time model is reported for information; it is close, not equal
    assert 0 < report["max_abs_logit_diff_vs_training_model"] < 5
    assert summary["max_abs_logit_diff_vs_adapter"] == report["max_abs_logit_diff_vs_adapter"]

    tokenizer = AutoTokenizer.from_pretrained(merged_dir)
    original = AutoTokenizer.from_pretrained(resolve_model_path("tiny-llama"))
    assert tokenizer.chat_template == original.chat_template
    assert tokenizer("Hello there")["input_ids"] == original("Hello there")["input_ids"]
    assert (merged_dir / "generation_config.json").is_file()
    assert list(merged_dir.glob("*.safetensors"))
    assert not list(merged_dir.glob("*.bin"))
    assert not [p for p in merged_dir.parent.iterdir() if p.name.startswith(".merged")]


def test_missing_adapter_is_a_user_error(tmp_path: Path, make_context) -> None:
    with pytest.raises(UserError, match="lorapipe train"):
        run_stage(make_context(tmp_path / "run"))


def test_disabled_merge_is_skipped(tmp_path: Path, make_context) -> None:
    ctx = make_context(tmp_path / "run", merge={"enabled": False})
    assert "skipped" in run_stage(ctx)
    assert not ctx.paths.merged.exists()


def test_quantized_checkpoint_is_refused(tmp_path: Path, make_context) -> None:
    model = tmp_path / "quantized-model"
    shutil.copytree(resolve_model_path("tiny-llama"), model)
    config = json.loads((model / "config.json").read_text())
    config["quantization_config"] = {"quant_method": "bitsandbytes", "load_in_4bit": True}
    (model / "config.json").write_text(json.dumps(config))
    ctx = make_context(tmp_path / "run", model={"name_or_path": str(model)})
    (ctx.paths.adapter).mkdir(parents=True)
    (ctx.paths.adapter / "adapter_config.json").write_text("{}")
    write_manifest(ctx.paths.adapter)
    with pytest.raises(UserError, match="stored quantized \\(bitsandbytes\\).*full precision"):
        run_stage(ctx)
    assert not ctx.paths.merged.exists()


def test_merged_carries_every_tokenizer_file_of_the_base(tmp_path: Path, make_context,
                                                        save_adapter) -> None:  # noqa: ANN001
    """Tools other than transformers read files save_pretrained does not write (llama.cpp's
    converter reads SentencePiece's tokenizer.model): prepare keeps them beside the
    training tokenizer, and merged/ has them byte for byte."""
    from lorapipe.data.stage import run_stage as prepare

    base = shutil.copytree(resolve_model_path("tiny-llama"), tmp_path / "base")
    extra = {"tokenizer.model": bytes(range(256)) * 4, "added_tokens.json": b"{}\n"}
    for name, content in extra.items():
        (base / name).write_bytes(content)
    ctx = make_context(tmp_path / "run", model={"name_or_path": str(base)})
    prepare(ctx)
    save_adapter(ctx.paths.adapter)
    run_stage(ctx)
    for name, content in extra.items():
        assert (ctx.paths.tokenizer / name).read_bytes() == content, name
        assert (ctx.paths.merged / name).read_bytes() == content, name
    merged = AutoTokenizer.from_pretrained(ctx.paths.merged)
    assert merged("Hello there")["input_ids"] == AutoTokenizer.from_pretrained(base)(
        "Hello there")["input_ids"]


def test_a_damaged_adapter_is_refused_naming_the_file(adapter_run, capsys) -> None:  # noqa: ANN001
    """One flipped byte in adapter/ and merge refuses, naming the file, before any work."""
    weights = adapter_run.paths.adapter / "adapter_model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-5] ^= 0x01
    weights.write_bytes(bytes(data))
    with pytest.raises(UserError, match=r"adapter_model\.safetensors does not match its "
                                        r"checksum.*lorapipe train CONFIG"):
        run_stage(adapter_run)
    assert not adapter_run.paths.merged.exists()
