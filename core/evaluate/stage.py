"""The ``evaluate`` stage: every configured evaluator scores base vs fine-tuned.

The model is loaded once as it was trained (quantized base + ``adapter/``); evaluators
switch the adapter off for the base score. Results go to ``eval/report.json`` keyed by
evaluator name, and a table is printed.
"""

from __future__ import annotations

import json
from typing import Any

from lorapipe.atomic import atomic_write_json
from lorapipe.context import RunContext
from lorapipe.errors import UserError
from lorapipe.evaluate.context import EvalContext


def load_validation(ctx: RunContext) -> Any:
    from datasets import load_from_disk

    path = ctx.paths.validation_data
    if not path.is_dir():
        raise UserError(f"{path}: no validation data; run `lorapipe prepare` first")
    # datasets writes an empty set as zero shards, which load_from_disk cannot read back.
    state = path / "state.json"
    shards = json.loads(state.read_text())["_data_files"] if state.is_file() else None
    dataset = load_from_disk(str(path)) if shards != [] else None
    if dataset is None or len(dataset) == 0:
        raise UserError(
            f"{path}: the validation set is empty, so there is nothing to evaluate on; "
            "raise data.validation.fraction / data.validation.count, or give "
            "data.validation.loader"
        )
    return dataset


def _load_model(ctx: RunContext) -> tuple[Any, Any, Any]:
    from peft import PeftModel
    from transformers import AutoTokenizer

    from lorapipe.model import load_base_model, load_tokenizer

    adapter = ctx.paths.adapter
    if not (adapter / "adapter_config.json").is_file():
        raise UserError(f"{adapter}: no adapter to evaluate; run `lorapipe train` first")
    tokenizer = (AutoTokenizer.from_pretrained(ctx.paths.tokenizer)
                 if ctx.paths.tokenizer.is_dir() else load_tokenizer(ctx.config))
    model = PeftModel.from_pretrained(load_base_model(ctx.config, ctx.registry), adapter)
    ref = ctx.config.data.template
    template = ctx.registry.get("chat_template", ref.name, "data.template.name")(ref.options)
    return model, tokenizer, template


def run_stage(ctx: RunContext) -> dict[str, Any]:
    from lorapipe.model import record_memory

    refs = ctx.config.evaluate.evaluators
    if not refs:
        return {"evaluators": [], "note": "evaluate.evaluators is empty; nothing evaluated"}
    evaluators = [
        ctx.registry.get("evaluator", ref.name, f"evaluate.evaluators.{i}.name")(ref.options)
        for i, ref in enumerate(refs)
    ]
    dataset = load_validation(ctx)
    model, tokenizer, template = _load_model(ctx)
    eval_ctx = EvalContext(model, tokenizer, template, dataset, ctx)
    report = {evaluator.name: evaluator.evaluate(eval_ctx) for evaluator in evaluators}
    record_memory(ctx.paths.metrics, "evaluation")
    atomic_write_json(ctx.paths.eval_report, report)
    print_report(report)
    return report


def print_report(report: dict[str, dict[str, Any]]) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title="evaluation: base → fine-tuned")
    for column in ("evaluator", "metric", "base", "fine-tuned", "change"):
        table.add_column(column, justify="right" if column in ("base", "fine-tuned", "change")
                         else "left")
    for name, result in report.items():
        for metric, base in (result.get("base") or {}).items():
            tuned = result.get("finetuned", {}).get(metric)
            change = result.get("change", {}).get(metric)
            table.add_row(name, metric, _fmt(base), _fmt(tuned), _fmt(change, signed=True))
    Console().print(table)


def _fmt(value: Any, signed: bool = False) -> str:
    if isinstance(value, float):
        return f"{value:+.3f}" if signed else f"{value:.3f}"
    return "—" if value is None else str(value)
