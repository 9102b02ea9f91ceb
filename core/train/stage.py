"""``lorapipe train``: read the prepared data, build the trainable model, run the loop."""

from __future__ import annotations

from typing import Any

from datasets import load_from_disk

from lorapipe.artifacts import RunPaths
from lorapipe.atomic import atomic_write_json
from lorapipe.context import RunContext
from lorapipe.errors import UserError
from lorapipe.train.loop import TrainSetup, train


def run_stage(ctx: RunContext) -> dict[str, Any]:
    from accelerate.utils import set_seed

    from lorapipe.model.adapters import build_trainable_model
    from lorapipe.model.diagnostics import adapter_diagnostics
    from lorapipe.model.gpu_options import check_device_options
    from lorapipe.model.memory import memory_snapshot
    from lorapipe.model.pretrained import load_tokenizer, pad_token_id, prepared_tokenizer
    from lorapipe.model.source import refuse_stored_quantized

    paths, config = ctx.paths, ctx.config
    refuse_stored_quantized(config.model.name_or_path)
    check_device_options(config, ctx.device, ctx.dtype)
    paths.require_data()
    train_data = load_from_disk(str(paths.train_data))
    validation = None
    if paths.validation_data.is_dir():
        validation = load_from_disk(str(paths.validation_data))
    tokenizer = prepared_tokenizer(paths, config.model)
    _check_same_tokenizer(tokenizer, load_tokenizer(config.model), paths)
    set_seed(config.train.seed)  # adapter initialisation is part of the run's determinism
    model, report = build_trainable_model(
        ctx.model_setup, gradient_checkpointing=config.train.gradient_checkpointing,
        report_path=paths.model_report)
    setup = TrainSetup(config=config.train, paths=paths, pad_token_id=pad_token_id(tokenizer),
                       max_length=config.data.max_length, config_hash=ctx.config_hash,
                       resume=ctx.resume, allow_config_change=ctx.allow_config_change,
                       memory=memory_snapshot, run_config=ctx.plan.resolved_dict())
    validation = validation if validation is not None and len(validation) else None
    summary = train(model, train_data, validation, setup)
    if paths.adapter.is_dir() and ctx.is_main_process:
        report["lora"] = adapter_diagnostics(paths.adapter)
        summary["lora_notes"] = report["lora"]["notes"]
    if ctx.is_main_process:
        _record_memory(paths, report, memory_snapshot())
    return summary


def _record_memory(paths: RunPaths, report: dict[str, Any], peak: dict[str, Any]) -> None:
    """Memory at each transition into metrics.jsonl, and beside the estimate in the report."""
    from lorapipe.model.memory import record_memory

    measured = report["memory"]["measured"]
    measured["training_peak"] = peak
    for stage, snapshot in measured.items():
        record_memory(paths.metrics, stage, snapshot)
    atomic_write_json(paths.model_report, report)


def _check_same_tokenizer(prepared: Any, model_tokenizer: Any, paths: Any) -> None:
    """Ids mean nothing under another vocabulary: refuse data prepared for another model."""
    from lorapipe.model.pretrained import tokenization_difference

    differs = tokenization_difference(prepared, model_tokenizer)
    if differs is not None:
        raise UserError(
            f"the data in {paths.data} was tokenized with a different tokenizer than "
            f"model.name_or_path's (their {differs.replace('_', '-')} differs); run "
            "`lorapipe prepare CONFIG` again for this model"
        )
