"""The ``evaluate`` stage: every configured evaluator scores base vs fine-tuned.

The model is loaded once as it was trained (quantized base + ``adapter/``); evaluators
switch the adapter off for the base score. Results go to ``eval/report.json`` keyed by
evaluator name, and a table is printed; ``eval/samples.jsonl`` keeps a few replies of both
models for report.html.
"""

from __future__ import annotations

import json
from typing import Any

from lorapipe.atomic import atomic_write_json
from lorapipe.components import EvalContext
from lorapipe.context import RunContext
from lorapipe.errors import UserError
from lorapipe.evaluate.samples import write_samples
from lorapipe.manifest import require_intact
from lorapipe.safetensors_check import require_safe_adapter


def load_held_out(ctx: RunContext) -> Any:
    """The set evaluators score: the test split when ``data.test`` made one (the
    validation set chose the best checkpoint, so scores on it flatter the run)."""
    from datasets import load_from_disk

    path = ctx.paths.validation_data
    if ctx.paths.test_data.is_dir():
        path = ctx.paths.test_data
    elif not path.is_dir():
        raise UserError(f"{path}: no validation data; run `lorapipe prepare` first")
    # only what evaluation reads: a large training split is not hashed again
    require_intact(ctx.paths.data, "run `lorapipe prepare CONFIG` again (it re-creates it)",
                   parts=(path.name, ctx.paths.tokenizer.name))
    # datasets writes an empty set as zero shards, which load_from_disk cannot read back.
    state = path / "state.json"
    shards = json.loads(state.read_text())["_data_files"] if state.is_file() else None
    dataset = load_from_disk(str(path)) if shards != [] else None
    if dataset is None or len(dataset) == 0:
        raise UserError(
            f"{path}: the {path.name} set is empty, so there is nothing to evaluate on; "
            "raise data.validation.fraction / data.validation.count, or give "
            "data.validation.loader"
        )
    return dataset


def _load_model(ctx: RunContext) -> Any:
    """The model as it was trained: the quantized base with ``adapter/``."""
    from peft import PeftModel

    from lorapipe.model.loading import load_base_model

    adapter = ctx.paths.require_adapter("evaluate")
    # before peft sees it: it would torch.load an adapter_model.bin
    require_safe_adapter(adapter, "run `lorapipe train CONFIG` again")
    base = load_base_model(ctx.config.model, dtype=ctx.dtype, device=ctx.device,
                           quantizer=ctx.plan.quantizer)
    return PeftModel.from_pretrained(base, adapter)


def run_stage(ctx: RunContext) -> dict[str, Any]:
    from lorapipe.model.memory import record_memory
    from lorapipe.model.pretrained import pad_token_id, prepared_tokenizer

    evaluators = ctx.plan.evaluators
    if not evaluators:
        return {"evaluators": [], "note": "evaluate.evaluators is empty; nothing evaluated"}
    dataset = load_held_out(ctx)
    tokenizer = prepared_tokenizer(ctx.paths, ctx.config.model)
    eval_ctx = EvalContext(model=_load_model(ctx), tokenizer=tokenizer,
                           template=ctx.plan.template, dataset=dataset,
                           pad_token_id=pad_token_id(tokenizer),
                           output_dir=ctx.paths.eval_dir, run=ctx.run_info)
    split = "test" if ctx.paths.test_data.is_dir() else "validation"
    report = {evaluator.name: {**evaluator.evaluate(eval_ctx), "split": split}
              for evaluator in evaluators}
    write_samples(eval_ctx, ctx.paths.eval_samples)
    record_memory(ctx.paths.metrics, "evaluation")
    atomic_write_json(ctx.paths.eval_report, report)
    print_report(report)
    return report


def print_report(report: dict[str, dict[str, Any]]) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title="evaluation: base → fine-tuned")
    columns = ("evaluator", "metric", "base", "fine-tuned", "change", "change, 95% CI")
    for column in columns:
        table.add_column(column, justify="left" if column in columns[:2] else "right")
    for name, result in report.items():
        intervals = (result.get("ci95") or {}).get("change") or {}
        for metric, base in (result.get("base") or {}).items():
            tuned = result.get("finetuned", {}).get(metric)
            change = result.get("change", {}).get(metric)
            interval = intervals.get(metric)
            shown = (f"{interval[0]:+.3f} to {interval[1]:+.3f}" if interval else "—")
            table.add_row(name, metric, _fmt(base), _fmt(tuned), _fmt(change, signed=True),
                          shown)
    Console().print(table)


def _fmt(value: Any, signed: bool = False) -> str:
    if isinstance(value, float):
        return f"{value:+.3f}" if signed else f"{value:.3f}"
    return "—" if value is None else str(value)
