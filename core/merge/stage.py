"""The ``merge`` stage: ``adapter/`` + the full-precision base → ``merged/``.

``merged/`` is a plain Hugging Face model directory (safetensors, config, generation
config, the tokenizer that produced the training ids with its chat template) written
atomically, plus ``lorapipe_merge.json`` recording how it was made and verified.

The weights are merged shard by shard (``streaming``), so a model larger than memory
merges; base + adapter and the merged model are then compared by their logits, in memory
when the model fits once, else module by module (``streamed_logits``).
"""

from __future__ import annotations

import gc
import json
import shutil
import time
from pathlib import Path
from typing import Any

import torch
from peft import LoraConfig

from lorapipe.atomic import atomic_directory, atomic_write_json
from lorapipe.cards import write_model_card
from lorapipe.config import ModelConfig
from lorapipe.context import RunContext
from lorapipe.manifest import write_manifest
from lorapipe.merge.checks import logits, max_abs_diff
from lorapipe.merge.streamed_logits import (
    Checkpoint,
    adapter_source,
    materialize_buffers,
    model_source,
    streamed_logits,
)
from lorapipe.merge.streaming import Architecture, Layout, lora_init, merge_checkpoint
from lorapipe.model.source import refuse_stored_quantized
from lorapipe.safetensors_check import require_safe_adapter

MERGE_REPORT = "lorapipe_merge.json"
# Merged vs base+adapter in the same precision differ only by rounding of W + BA.
# In half precision W + BA is rounded once more than W x + B A x, so only a broken merge
# (adapter missing, wrong scaling) exceeds these.
_TOLERANCE = {"fp32": 1e-3, "bf16": 1.0, "fp16": 0.5}
_SAMPLES, _SAMPLE_TOKENS = 4, 64
# An output shard is held, then serialised (a second copy), while the next input shard is
# mapped: an eighth of the memory left keeps the whole well inside it.
_MAX_SHARD_BYTES = 2 << 30


def run_stage(ctx: RunContext) -> dict[str, Any]:
    from lorapipe.model.dtypes import dtype_name, resolve_dtype
    from lorapipe.model.loading import weightless_model
    from lorapipe.model.memory import memory_left
    from lorapipe.model.pretrained import prepared_tokenizer

    config, device = ctx.config, ctx.device
    if not config.merge.enabled:
        return {"skipped": "merge.enabled is false"}
    adapter = ctx.paths.require_adapter("merge")
    base_dir = _local_model_dir(config.model.name_or_path)
    refuse_stored_quantized(str(base_dir))
    # before peft sees it: it would torch.load an adapter_model.bin
    require_safe_adapter(adapter, "run `lorapipe train CONFIG` again")

    # merged/ is the base checkpoint's kind of file unless asked otherwise: an fp32 base
    # trained in bf16 compute still merges (and is checked) in fp32.
    dtype = (resolve_dtype(config.merge.dtype, device=device) if config.merge.dtype
             else Layout.of(base_dir).stored_dtype())
    started = time.perf_counter()
    tokenizer = prepared_tokenizer(ctx.paths, config.model)
    samples = _verification_samples(ctx, tokenizer)
    budget = memory_left()
    model_bytes = Layout.of(base_dir).numel() * torch.tensor([], dtype=dtype).element_size()
    # In memory when it fits once; beyond, streamed (a PiSSA/OLoRA base is rebuilt by
    # peft at load, which streaming does not do: there the probe checks stand alone).
    fits = model_bytes * 1.25 < budget
    lora = LoraConfig.from_pretrained(str(adapter))
    architecture = Architecture.of(weightless_model(config.model), lora)
    init = lora_init(lora)
    if fits:
        reference = _adapter_logits(ctx, adapter, dtype, samples)
    elif init is None:  # beyond memory: streamed, one module's weights at a time
        reference = _streamed_adapter_logits(ctx, base_dir, adapter, dtype, samples)
    else:
        reference = None
    with atomic_directory(ctx.paths.merged) as tmp:
        report = merge_checkpoint(base_dir, adapter, tmp, dtype=dtype,
                                  shard_bytes=min(_MAX_SHARD_BYTES, max(budget // 8, 1 << 20)),
                                  architecture=architecture)
        _write_tokenizer(ctx, tokenizer, tmp)
        write_model_card(tmp, ctx.paths, "merged", training=_training_summary(ctx))
        report.update(dtype=dtype_name(dtype), base_model=config.model.name_or_path,
                      adapter=str(adapter), model_bytes=model_bytes)
        merged_logits = None
        if reference is not None:
            merged_logits = (_model_logits(tmp, ctx, dtype, samples) if fits
                             else _streamed_model_logits(tmp, ctx, dtype, samples))
            report["logits_compared"] = "in memory" if fits else "streamed module by module"
            limit = _TOLERANCE.get(dtype_name(dtype), 1e-3)
            report.update(max_abs_logit_diff_vs_adapter=max_abs_diff(reference, merged_logits),
                          verified_tokens=sum(len(ids) for ids in samples), tolerance=limit)
            if report["max_abs_logit_diff_vs_adapter"] > limit:
                raise RuntimeError(
                    f"merged model's logits differ from base+adapter by "
                    f"{report['max_abs_logit_diff_vs_adapter']:.3g} (> {limit}); merged/ not "
                    "written")
        else:
            report["logits_not_compared"] = (
                f"the model ({model_bytes:,} bytes) does not fit in the memory available "
                f"({budget:,} bytes), and the streamed comparison cannot rebuild a {init} "
                "adapter's base; each merged tensor was checked on probe vectors")
        atomic_write_json(tmp / MERGE_REPORT, report)

    if merged_logits is not None and fits:
        report["max_abs_logit_diff_vs_training_model"] = _diff_vs_training_model(
            ctx, samples, merged_logits, device)
        atomic_write_json(ctx.paths.merged / MERGE_REPORT, report)
    # Hashed once, when merged/ is final: until then it has no manifest, which export and
    # --resume read as "merge did not finish".
    write_manifest(ctx.paths.merged)
    report["seconds"] = round(time.perf_counter() - started, 2)
    report["path"] = str(ctx.paths.merged)
    return report


def _training_summary(ctx: RunContext) -> dict[str, Any] | None:
    """What run.json recorded of the train stage (None when train ran elsewhere)."""
    if not ctx.paths.run_json.is_file():
        return None
    stage = json.loads(ctx.paths.run_json.read_text()).get("stages", {}).get("train", {})
    return stage.get("summary")


def _local_model_dir(name_or_path: str) -> Path:
    """The base's files on disk: its directory, or the hub's cached snapshot (fetched the
    way transformers fetches it when it is not there yet)."""
    from lorapipe.model.source import resolve_model_path

    path = Path(resolve_model_path(name_or_path))
    if path.is_dir():
        return path
    from huggingface_hub import snapshot_download

    return Path(snapshot_download(name_or_path, allow_patterns=["*.json", "*.safetensors"]))


def _adapter_logits(ctx: RunContext, adapter: Path, dtype: torch.dtype,
                    samples: list[list[int]]) -> list[torch.Tensor]:
    """What base + adapter computes (peft, unmerged), the reference for the merged model."""
    from peft import PeftModel

    from lorapipe.model.loading import load_base_model

    base = load_base_model(ctx.config.model, dtype=dtype, device=ctx.device)
    model = PeftModel.from_pretrained(base, adapter)
    model.eval()
    result = logits(model, samples)
    del model, base
    gc.collect()
    return result


def _streamed_adapter_logits(ctx: RunContext, base_dir: Path, adapter: Path,
                             dtype: torch.dtype, samples: list[list[int]]
                             ) -> list[torch.Tensor]:
    """base + adapter's logits without holding the model (streamed_logits.py)."""
    from peft import get_peft_model
    from safetensors.torch import load_file

    model = get_peft_model(_meta_model(ctx.config.model),
                           LoraConfig.from_pretrained(str(adapter))).eval()
    weights = load_file(str(adapter / "adapter_model.safetensors"))
    return streamed_logits(model, adapter_source(model, Checkpoint(base_dir), weights),
                           samples, dtype)


def _streamed_model_logits(model_dir: Path, ctx: RunContext, dtype: torch.dtype,
                           samples: list[list[int]]) -> list[torch.Tensor]:
    model = _meta_model(ctx.config.model.model_copy(update={"name_or_path": str(model_dir)}))
    return streamed_logits(model, model_source(model, Checkpoint(model_dir)), samples, dtype)


def _meta_model(model: ModelConfig) -> torch.nn.Module:
    """The model's modules on the meta device, with the buffers no checkpoint holds."""
    from lorapipe.model.loading import weightless_model

    skeleton = weightless_model(model)
    materialize_buffers(skeleton)
    return skeleton.eval()


def _model_logits(model_dir: Path, ctx: RunContext, dtype: torch.dtype,
                  samples: list[list[int]]) -> list[torch.Tensor]:
    from transformers import AutoModelForCausalLM

    from lorapipe.model.pretrained import from_pretrained

    model = from_pretrained(AutoModelForCausalLM, model_dir,
                            trust_remote_code=ctx.config.model.trust_remote_code, dtype=dtype,
                            device_map={"": ctx.device})
    model.eval()
    result = logits(model, samples)
    del model
    gc.collect()
    return result


def _write_tokenizer(ctx: RunContext, tokenizer: Any, out_dir: Path) -> None:
    """The files of the tokenizer that produced the training ids, as prepare kept them
    (every file the base had, and the chat template the run trained with)."""
    from lorapipe.model.pretrained import save_tokenizer

    if ctx.paths.tokenizer.is_dir():
        shutil.copytree(ctx.paths.tokenizer, out_dir, dirs_exist_ok=True)
    else:
        save_tokenizer(tokenizer, ctx.config.model, out_dir)


def _verification_samples(ctx: RunContext, tokenizer: Any) -> list[list[int]]:
    """A few validation sequences (or a fixed text when there are none) to compare on."""
    path = ctx.paths.validation_data
    if path.is_dir():
        from datasets import load_from_disk

        data = load_from_disk(str(path))
        rows = data.select(range(min(_SAMPLES, len(data))))["input_ids"]
        if rows:
            return [list(ids[:_SAMPLE_TOKENS]) for ids in rows]
    ids = tokenizer("The quick brown fox jumps over the lazy dog. 1, 2, 3!")["input_ids"]
    return [list(ids)]


def _diff_vs_training_model(ctx: RunContext, samples: list[list[int]], merged_logits: list,
                            device: str) -> float | None:
    """For information: how far merged/ is from the (quantized) model that was trained.

    ``None`` when the quantizer leaves the weights as they are (the in-precision check
    covers it).
    """
    from peft import PeftModel

    from lorapipe.model.loading import load_base_model

    quantizer = ctx.plan.quantizer
    if not quantizer.quantized:
        return None
    base = load_base_model(ctx.config.model, dtype=ctx.dtype, device=device,
                           quantizer=quantizer)
    model = PeftModel.from_pretrained(base, ctx.paths.adapter)
    model.eval()
    diff = max_abs_diff(logits(model, samples), merged_logits)
    del model, base
    gc.collect()
    return diff
