"""A text model packaged in a multimodal checkpoint, as Qwen3.5 is released
(``Qwen3_5ForConditionalGeneration``: the text model under ``model.language_model.``, a
vision tower under ``model.visual.``, and a multi-token-prediction block under ``mtp.``)
and Llama 4 (``language_model.model.``, beside ``vision_model.``).

transformers loads its causal LM by renaming the text model's keys to ``model.*`` and
leaving the rest out, so the adapter names the text model's modules, not the checkpoint's
keys. The merge must find each update's tensor by transformers' own renaming and write
merged/ in the checkpoint's layout, every tensor it does not update kept as it was; the
GGUF exporter writes the text model, as llama.cpp's converter does (``--no-mtp``).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from current_families import FAMILIES, QWEN35, SHAPE
from datasets import load_from_disk
from llama_cpp_material import (
    cpp_logits,
    f16_valued_logits,
    llama_cpp_tree,
    read_gguf,
    real_tokenizer,
)
from merge_judge import merge_errors
from safetensors.torch import load_file, save_file
from transformers import (
    AutoTokenizer,
    Gemma3Config,
    Gemma3ForConditionalGeneration,
    Llama4Config,
    Llama4ForConditionalGeneration,
    Qwen3_5Config,
    Qwen3_5ForConditionalGeneration,
)

from lorapipe.config import validate_config
from lorapipe.context import RunContext
from lorapipe.errors import UserError
from lorapipe.pipeline import run_one_stage
from lorapipe.plan import build_plan
from lorapipe.plugins.exporters.gguf.families import model_family

SAMPLE = Path(__file__).resolve().parents[2] / "configs" / "data" / "quickstart.jsonl"


def _released_qwen35(out: Path) -> Path:
    shutil.copytree(real_tokenizer("qwen35"), out)
    text = {**SHAPE, **QWEN35, **_token_ids(out)}
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


def _released_llama4(out: Path) -> Path:
    """Llama 4 as Scout and Maverick are released: language_model.model.*, the vision
    model and its projector beside it."""
    shutil.copytree(real_tokenizer("llama3"), out)
    text = {**SHAPE, **FAMILIES["llama4"].config, **_token_ids(out)}
    vision = dict(num_hidden_layers=1, hidden_size=32, num_attention_heads=2,
                  intermediate_size=64, vision_output_dim=64, projector_input_dim=64,
                  projector_output_dim=64, image_size=28, patch_size=14)
    torch.manual_seed(0)
    Llama4ForConditionalGeneration(Llama4Config(text_config=text, vision_config=vision)
                                   ).save_pretrained(out)
    return out


def _token_ids(tokenizer_dir: Path) -> dict[str, int | None]:
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    return {"vocab_size": len(tokenizer), "bos_token_id": tokenizer.bos_token_id,
            "eos_token_id": tokenizer.eos_token_id, "pad_token_id": tokenizer.pad_token_id}


# model type of the packaged checkpoint → how it is built, its text model's prefix in the
# checkpoint, llama.cpp's architecture, and the converter's options and pre-tokenizer name
# where they differ from ours (the Qwen 3.5 stand-in vocabulary hashes to qwen2 there)
RELEASED = {
    "qwen3_5": (_released_qwen35, "model.language_model.layers.", "qwen35", ["--no-mtp"],
                ("qwen35", "qwen2")),
    "llama4": (_released_llama4, "language_model.model.layers.", "llama4", [], None),
}


def _context(base: Path, data: Path, out: Path) -> RunContext:
    return RunContext(build_plan(validate_config({
        "model": {"name_or_path": str(base), "quantizer": "nf4"},
        "data": {"loader": {"name": "jsonl", "path": str(data)}, "max_length": 64,
                 "validation": {"count": 2}},
        "train": {"max_steps": 2, "micro_batch_size": 2, "gradient_accumulation_steps": 1,
                  "logging_steps": 1, "gradient_checkpointing": False,
                  "learning_rate": 1e-2},
        "export": {"exporters": [{"name": "gguf", "types": ["f16"]}]},
        "output_dir": str(out),
    })))


@pytest.fixture(scope="module", params=[
    "qwen3_5", pytest.param("llama4", marks=pytest.mark.families)])
def packaged_run(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
                 ) -> tuple[str, Path, RunContext]:
    tmp = tmp_path_factory.mktemp(request.param)
    base = RELEASED[request.param][0](tmp / "model")
    data = tmp / "chats.jsonl"
    data.write_text("".join(SAMPLE.read_text().splitlines(keepends=True)[:16]))
    ctx = _context(base, data, tmp / "run")
    for stage in ("prepare", "train", "merge", "export"):
        run_one_stage(ctx, stage)
    return request.param, base, ctx


def test_a_packaged_text_model_merges_into_its_own_layout(packaged_run) -> None:
    model_type, base, ctx = packaged_run
    ids = list(load_from_disk(str(ctx.paths.validation_data))[0]["input_ids"])
    error, change = merge_errors(base, ctx.paths.adapter, ctx.paths.merged, ids)
    assert error < 1e-4 and change > 1e-4
    before = load_file(base / "model.safetensors")
    after = {}
    for shard in ctx.paths.merged.glob("*.safetensors"):
        after.update(load_file(shard))
    assert set(after) == set(before)  # the checkpoint's own keys, vision and MTP included
    updated = {k for k in before if not torch.equal(before[k], after[k].to(before[k].dtype))}
    assert updated and all(k.startswith(RELEASED[model_type][1]) for k in updated)
    assert json.loads((ctx.paths.merged / "config.json").read_text())["model_type"] == model_type


def test_its_gguf_is_the_text_models_as_the_converter_writes_it(packaged_run,
                                                                tmp_path: Path) -> None:
    """llama.cpp computes what transformers computes on merged/ (with the weights the f16
    file holds), and the file is the converter's tensor for tensor."""
    model_type, _, ctx = packaged_run
    _, _, arch, options, pre = RELEASED[model_type]
    f16 = ctx.paths.export_dir("gguf") / "model-f16.gguf"
    ids = list(load_from_disk(str(ctx.paths.validation_data))[0]["input_ids"])
    hf = f16_valued_logits(ctx.paths.merged, ids)
    assert np.abs(cpp_logits(f16, ids) - hf).max() < 0.02 * hf.std() + 1e-3

    reference = tmp_path / "converter-f16.gguf"
    subprocess.run([sys.executable, str(llama_cpp_tree() / "convert_hf_to_gguf.py"),
                    str(ctx.paths.merged), *options, "--outtype", "f16", "--outfile",
                    str(reference)], check=True, capture_output=True)
    (ours_meta, ours), (theirs_meta, theirs) = read_gguf(f16), read_gguf(reference)
    if pre is not None:
        key = "tokenizer.ggml.pre"
        assert (ours_meta.pop(key), theirs_meta.pop(key)) == pre
    assert ours_meta["general.architecture"] == theirs_meta["general.architecture"] == arch
    provenance = ("general.", "lorapipe.")  # names and sources each tool writes its own way
    assert ({k: v for k, v in ours_meta.items() if not k.startswith(provenance)}
            == {k: v for k, v in theirs_meta.items() if not k.startswith(provenance)})
    assert sorted(ours) == sorted(theirs)
    for name, tensor in ours.items():
        assert (tensor.type, tensor.shape) == (theirs[name].type, theirs[name].shape), name
        assert bytes(tensor.data) == bytes(theirs[name].data), name


def test_a_packaged_model_whose_text_model_is_not_found_is_refused(tmp_path: Path) -> None:
    """Gemma 3 as released: transformers loads it whole (Gemma3ForConditionalGeneration),
    not as a text causal LM, so its renaming says nothing of model.language_model.*; the
    GGUF exporter refuses it by name, before any weight is read, rather than write a file
    without its text model."""
    text = {**SHAPE, "head_dim": 16, "vocab_size": 1024, "sliding_window": 128}
    vision = dict(num_hidden_layers=1, hidden_size=32, num_attention_heads=2,
                  intermediate_size=64, image_size=28, patch_size=14)
    Gemma3ForConditionalGeneration(Gemma3Config(text_config=text, vision_config=vision)
                                   ).save_pretrained(tmp_path)
    with pytest.raises(UserError, match=r"a multimodal checkpoint whose text model's tensors "
                                        r"\(its model\.embed_tokens\.weight\) transformers' "
                                        r"renaming does not find.*convert_hf_to_gguf\.py"):
        model_family(tmp_path)
