"""The merge stage, judged by transformers (loads merged/) and peft (loads adapter/)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

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
SAMPLE = Path(__file__).resolve().parents[2] / "configs" / "data" / "quickstart.jsonl"


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
    with pytest.raises(UserError, match="stored quantized \\(bitsandbytes\\).*full-precision"):
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


LIMITED_MERGE = r"""
import json, resource, sys
from pathlib import Path
from typing import Any
import peft, torch, transformers  # noqa: F401 (imported before the limit, as the stage's)
import transformers.models.llama.modeling_llama  # noqa: F401
from lorapipe.config import validate_config
from lorapipe.context import RunContext
from lorapipe.merge import run_stage
from lorapipe.plan import build_plan
model_dir, output_dir, data, headroom = sys.argv[1:5]
ctx = RunContext(build_plan(validate_config({
    "model": {"name_or_path": model_dir}, "data": {"loader": {"name": "jsonl", "path": data}},
    "output_dir": output_dir})))
status = Path("/proc/self/status").read_text().splitlines()
used = next(int(line.split()[1]) * 1024 for line in status if line.startswith("VmData:"))
resource.setrlimit(resource.RLIMIT_DATA, (used + int(headroom), resource.RLIM_INFINITY))
print(json.dumps(run_stage(ctx)))
"""


def test_a_model_larger_than_the_memory_left_merges(tmp_path: Path) -> None:
    """``ulimit -d`` leaves the merge 60% of the model's size: it merges shard by shard,
    checks each tensor, compares the logits streamed module by module, and merged/
    computes what base + adapter computes."""
    import subprocess
    import sys

    from peft import LoraConfig, get_peft_model
    from transformers import LlamaConfig, LlamaForCausalLM

    tiny = Path(resolve_model_path("tiny-llama"))
    vocab = AutoModelForCausalLM.from_pretrained(tiny).config.vocab_size
    torch.manual_seed(0)
    # large enough (370 MB) that what the interpreter allocates besides is small beside it
    base = LlamaForCausalLM(LlamaConfig(vocab_size=vocab, hidden_size=1024,
                                        intermediate_size=2816, num_hidden_layers=8,
                                        num_attention_heads=16, num_key_value_heads=8))
    model_dir, run = tmp_path / "model", tmp_path / "run"
    base.save_pretrained(model_dir, max_shard_size="20MB")
    for path in tiny.iterdir():
        if path.name.startswith(("tokenizer", "special_tokens")):
            shutil.copy2(path, model_dir / path.name)
    size = sum(p.numel() * p.element_size() for p in base.parameters())
    peft_model = get_peft_model(base, LoraConfig(r=8, target_modules=["q_proj", "down_proj"],
                                                 init_lora_weights=False))
    peft_model.save_pretrained(run / "adapter")
    write_manifest(run / "adapter")
    with torch.no_grad():
        expected = peft_model(input_ids=torch.tensor([IDS[0]])).logits

    done = subprocess.run([sys.executable, "-c", LIMITED_MERGE, str(model_dir), str(run),
                           str(SAMPLE), str(size * 6 // 10)], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    summary = json.loads(done.stdout.strip().splitlines()[-1])
    assert "logits_not_compared" not in summary
    assert summary["logits_compared"] == "streamed module by module"
    assert summary["max_abs_logit_diff_vs_adapter"] < 1e-3 and summary["verified_tokens"] > 0
    assert summary["shards"] > 1 and summary["max_probe_rel_error"] < 1e-5
    merged = AutoModelForCausalLM.from_pretrained(run / "merged", dtype=torch.float32)
    with torch.no_grad():
        got = merged(input_ids=torch.tensor([IDS[0]])).logits
    assert (got - expected).abs().max() < 1e-4


def test_merged_is_stored_as_the_base_whatever_the_compute_dtype(
        tmp_path: Path, make_context, save_adapter) -> None:  # noqa: ANN001
    """tiny-llama is stored in fp32: trained in bf16 compute, merged/ is still fp32 (and
    checked against base+adapter in fp32); merge.dtype chooses otherwise."""
    from safetensors import safe_open

    def stored(ctx: Any) -> set[str]:
        with safe_open(str(ctx.paths.merged / "model.safetensors"), framework="pt") as f:
            return {f.get_slice(k).get_dtype() for k in f.keys()}  # noqa: SIM118

    bf16 = make_context(tmp_path / "bf16", model={"name_or_path": "tiny-llama", "dtype": "bf16"})
    save_adapter(bf16.paths.adapter)
    assert run_stage(bf16)["dtype"] == "fp32" and stored(bf16) == {"F32"}
    asked = make_context(tmp_path / "asked", merge={"dtype": "bf16"})
    save_adapter(asked.paths.adapter)
    assert run_stage(asked)["dtype"] == "bf16" and stored(asked) == {"BF16"}
