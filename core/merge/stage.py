"""The ``merge`` stage: ``adapter/`` + the full-precision base → ``merged/``.

``merged/`` is a plain Hugging Face model directory (safetensors, config, generation
config, the tokenizer that produced the training ids with its chat template) written
atomically, plus ``lorapipe_merge.json`` recording how it was made and verified.
"""

from __future__ import annotations

import gc
import shutil
import time
from pathlib import Path
from typing import Any

from lorapipe.atomic import atomic_directory, atomic_write_json
from lorapipe.context import RunContext
from lorapipe.manifest import write_manifest
from lorapipe.merge.merging import logits, max_abs_diff, merge_adapter, refuse_quantized_checkpoint

MERGE_REPORT = "lorapipe_merge.json"
# Merged vs base+adapter in the same precision differ only by rounding of W + BA.
# In half precision W + BA is rounded once more than W x + B A x, so only a broken merge
# (adapter missing, wrong scaling) exceeds these.
_TOLERANCE = {"fp32": 1e-3, "bf16": 1.0, "fp16": 0.5}
_SAMPLES, _SAMPLE_TOKENS = 4, 64


def run_stage(ctx: RunContext) -> dict[str, Any]:
    from peft import PeftModel

    from lorapipe.model.dtypes import dtype_name, resolve_dtype
    from lorapipe.model.loading import load_base_model
    from lorapipe.model.pretrained import prepared_tokenizer
    from lorapipe.model.source import resolve_model_path

    config, device = ctx.config, ctx.device
    if not config.merge.enabled:
        return {"skipped": "merge.enabled is false"}
    adapter = ctx.paths.require_adapter("merge")
    refuse_quantized_checkpoint(resolve_model_path(config.model.name_or_path))

    dtype = resolve_dtype(config.merge.dtype, device=device) if config.merge.dtype else ctx.dtype
    started = time.perf_counter()
    base = load_base_model(config.model, dtype=dtype, device=device)  # exact weights
    model = PeftModel.from_pretrained(base, adapter)
    tokenizer = prepared_tokenizer(ctx.paths, config.model)
    samples = _verification_samples(ctx, tokenizer)
    merged, report = merge_adapter(model, samples)
    merged_logits = report.pop("_merged_logits")
    limit = _TOLERANCE.get(dtype_name(dtype), 1e-3)
    if report["max_abs_logit_diff_vs_adapter"] > limit:
        raise RuntimeError(
            f"merged model's logits differ from base+adapter by "
            f"{report['max_abs_logit_diff_vs_adapter']:.3g} (> {limit}); merged/ not written"
        )
    merged.config.use_cache = True  # the loader turned it off for training
    report.update(
        dtype=dtype_name(dtype),
        base_model=config.model.name_or_path,
        adapter=str(adapter),
        tolerance=limit,
    )
    with atomic_directory(ctx.paths.merged) as tmp:
        merged.save_pretrained(tmp, safe_serialization=True)
        _write_tokenizer(ctx, tokenizer, tmp)
        atomic_write_json(tmp / MERGE_REPORT, report)
    del merged, model, base
    gc.collect()

    report["max_abs_logit_diff_vs_training_model"] = _diff_vs_training_model(
        ctx, samples, merged_logits, device
    )
    atomic_write_json(ctx.paths.merged / MERGE_REPORT, report)
    # Hashed once, when merged/ is final: until then it has no manifest, which export and
    # --resume read as "merge did not finish".
    write_manifest(ctx.paths.merged)
    report["seconds"] = round(time.perf_counter() - started, 2)
    report["path"] = str(ctx.paths.merged)
    return report


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
