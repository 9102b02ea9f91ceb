"""A text model packaged in a multimodal checkpoint, as Qwen3.5 is released
(``Qwen3_5ForConditionalGeneration``: the text model under ``model.language_model.``, a
vision tower under ``model.visual.``, and a multi-token-prediction block under ``mtp.``).

transformers loads its causal LM by renaming ``model.language_model.*`` to ``model.*`` and
leaving the rest out, so the adapter names the text model's modules, not the checkpoint's
keys. The merge must find each update's tensor by transformers' own renaming and write
merged/ in the checkpoint's layout, every tensor it does not update kept as it was.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch
from current_families import QWEN35, SHAPE
from datasets import load_from_disk
from llama_cpp_material import real_tokenizer
from merge_judge import merge_errors
from safetensors.torch import load_file, save_file
from transformers import AutoTokenizer, Qwen3_5Config, Qwen3_5ForConditionalGeneration

from lorapipe.config import validate_config
from lorapipe.context import RunContext
from lorapipe.pipeline import run_one_stage
from lorapipe.plan import build_plan

SAMPLE = Path(__file__).resolve().parents[2] / "configs" / "data" / "quickstart.jsonl"


def _released_qwen35(out: Path) -> Path:
    shutil.copytree(real_tokenizer("qwen35"), out)
    tokenizer = AutoTokenizer.from_pretrained(out)
    text = {**SHAPE, **QWEN35, "vocab_size": len(tokenizer),
            "bos_token_id": tokenizer.bos_token_id, "eos_token_id": tokenizer.eos_token_id,
            "pad_token_id": tokenizer.pad_token_id}
    config = Qwen3_5Config(text_config=text,
                           vision_config=dict(depth=1, hidden_size=32, num_heads=2,
                                              intermediate_size=64, out_hidden_size=64))
    torch.manual_seed(0)
    Qwen3_5ForConditionalGeneration(config).save_pretrained(out)
    weights = load_file(out / "model.safetensors")
    # the released checkpoints' MTP block (transformers loads none of it)
    mtp = {"mtp.fc.weight": torch.randn(64, 128) * 0.02, "mtp.norm.weight": torch.zeros(64)}
    save_file({**weights, **mtp}, out / "model.safetensors", metadata={"format": "pt"})
    return out


def _context(base: Path, data: Path, out: Path) -> RunContext:
    return RunContext(build_plan(validate_config({
        "model": {"name_or_path": str(base), "quantizer": "nf4"},
        "data": {"loader": {"name": "jsonl", "path": str(data)}, "max_length": 64,
                 "validation": {"count": 2}},
        "train": {"max_steps": 2, "micro_batch_size": 2, "gradient_accumulation_steps": 1,
                  "logging_steps": 1, "gradient_checkpointing": False,
                  "learning_rate": 1e-2},
        "export": {"exporters": []},
        "output_dir": str(out),
    })))


def test_a_packaged_text_model_merges_into_its_own_layout(tmp_path: Path) -> None:
    base = _released_qwen35(tmp_path / "model")
    data = tmp_path / "chats.jsonl"
    data.write_text("".join(SAMPLE.read_text().splitlines(keepends=True)[:16]))
    ctx = _context(base, data, tmp_path / "run")
    for stage in ("prepare", "train", "merge"):
        run_one_stage(ctx, stage)

    ids = list(load_from_disk(str(ctx.paths.validation_data))[0]["input_ids"])
    error, change = merge_errors(base, ctx.paths.adapter, ctx.paths.merged, ids)
    assert error < 1e-4 and change > 1e-4
    before = load_file(base / "model.safetensors")
    after = {}
    for shard in ctx.paths.merged.glob("*.safetensors"):
        after.update(load_file(shard))
    assert set(after) == set(before)  # the checkpoint's own keys, vision and MTP included
    updated = {k for k in before if not torch.equal(before[k], after[k].to(before[k].dtype))}
    assert updated and all(k.startswith("model.language_model.layers.") for k in updated)
    assert json.loads((ctx.paths.merged / "config.json").read_text())["model_type"] == "qwen3_5"
