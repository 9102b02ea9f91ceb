"""The closing summary of ``lorapipe run``: one line per stage, then what was written.

It reads the stage summaries run.json records and the reports in the run directory,
so a resumed run summarises stages that ran in an earlier process too.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from lorapipe.artifacts import RunPaths
from lorapipe.manifest import MANIFEST
from lorapipe.units import format_bytes


def _size(path: Path) -> int:
    if path.is_file():
        return path.stat().st_size
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def artifacts(paths: RunPaths) -> list[tuple[str, int]]:
    """The run's deliverables that exist, with their sizes in bytes."""
    found = [paths.adapter, paths.merged]
    export_root = paths.root / "export"
    if export_root.is_dir():
        found += sorted(p for p in export_root.rglob("*") if p.is_file() and p.name != MANIFEST)
    found.append(paths.report)  # last: the line to open first
    return [(str(p), _size(p)) for p in found if p.exists()]


def _prepare_line(summary: dict[str, Any], paths: RunPaths) -> str:
    reasons = ""
    if paths.data_report.is_file():
        dropped = json.loads(paths.data_report.read_text()).get("dropped", {})
        reasons = ", ".join(f"{reason} {count}" for reason, count in dropped.items())
    line = (
        f"{summary['records_read']} records read, {summary['kept']} kept, "
        f"{summary['dropped']} dropped"
    )
    line += f" ({reasons})" if reasons else ""
    line += f" → {summary['train']} train / {summary['validation']} validation"
    line += f" / {summary['test']} test" if "test" in summary else ""
    return line + (" [reused]" if summary.get("reused") else "")


def _train_line(summary: dict[str, Any], _paths: RunPaths) -> str:
    line = (
        f"{summary['steps']} steps in {summary['seconds']:.0f} s, "
        f"{summary['tokens_per_s']:.0f} trained tokens/s"
    )
    if summary.get("best_eval_loss") is not None:
        line += f"; best eval loss {summary['best_eval_loss']:.4f} (step {summary['best_step']})"
    if summary.get("stopped_early"):
        line += "; stopped early"
    if summary.get("nonfinite_steps"):
        line += f"; {summary['nonfinite_steps']} non-finite steps skipped"
    if summary.get("spikes"):
        line += f"; {summary['spikes']} loss/gradient spikes"
    for note in summary.get("lora_notes") or []:
        line += f"; {note}"
    return line


def _evaluate_line(summary: dict[str, Any], _paths: RunPaths) -> str:
    if "note" in summary:  # nothing configured
        return summary["note"]
    parts = []
    for evaluator, scores in summary.items():
        if not isinstance(scores, dict):
            continue
        base, tuned = scores.get("base"), scores.get("finetuned")
        if not isinstance(base, dict) or not isinstance(tuned, dict):
            continue
        interval_shown = False
        for metric, before in base.items():
            after = tuned.get(metric)
            if before is None and isinstance(after, int | float):  # the fine-tuned's own
                interval = ((scores.get("ci95") or {}).get("finetuned") or {}).get(metric)
                shown = f" (95% CI: {interval[0]:.4g} to {interval[1]:.4g})" if interval else ""
                parts.append(f"{evaluator}.{metric} {after:.4g}{shown}")
            elif isinstance(before, int | float) and isinstance(after, int | float):
                part = f"{evaluator}.{metric} {before:.4g} → {after:.4g}"
                interval = ((scores.get("ci95") or {}).get("change") or {}).get(metric)
                if interval and not interval_shown:  # the headline metric's only: one line
                    part += f" (change, 95% CI: {interval[0]:+.4g} to {interval[1]:+.4g})"
                    interval_shown = True
                parts.append(part)
        for name, general in (scores.get("general") or {}).items():
            flag = " FORGETTING" if general.get("forgetting") else ""
            parts.append(f"{evaluator} on {name} {general['base']:.4g} → "
                         f"{general['finetuned']:.4g} ({general['increase']:+.1%}){flag}")
    splits = {scores.get("split") for scores in summary.values() if isinstance(scores, dict)}
    return "; ".join(parts) + (" (on the held-out test split)" if "test" in splits else "")


def _merge_line(summary: dict[str, Any], _paths: RunPaths) -> str:
    if summary.get("skipped"):
        return "skipped"
    shards = f", {summary['shards']} shards" if summary.get("shards", 1) > 1 else ""
    if "max_abs_logit_diff_vs_adapter" not in summary:
        return (f"{summary['dtype']}{shards}; checked tensor by tensor (max probe error "
                f"{summary['max_probe_rel_error']:.2g}): {summary['logits_not_compared']}")
    return (
        f"{summary['dtype']}{shards}; max |logit diff| vs base+adapter "
        f"{summary['max_abs_logit_diff_vs_adapter']:.2g}"
    )


def _export_line(summary: dict[str, Any], _paths: RunPaths) -> str:
    if "note" in summary:  # nothing configured
        return summary["note"]
    files: dict[str, list[str]] = {}
    for artifact in summary["artifacts"]:
        files.setdefault(artifact["exporter"], []).append(Path(artifact["path"]).name)
    line = "; ".join(f"{name}: {', '.join(names)}" for name, names in files.items())
    for scores in summary.get("scores", {}).values():
        each = ", ".join(f"{name} {s['perplexity']:.4g} ({s['increase']:+.1%})"
                         for name, s in scores["files"].items())
        line += (f"; response perplexity on {scores['split']}: merged/ "
                 f"{scores['merged']:.4g}, {each}")
    return line


# One line per stage, from its summary (and, for prepare, data/report.json's reasons).
LINES = {
    "prepare": _prepare_line,
    "train": _train_line,
    "evaluate": _evaluate_line,
    "merge": _merge_line,
    "export": _export_line,
}


def stage_line(stage: str, summary: dict[str, Any], paths: RunPaths) -> str:
    """One line saying what ``stage`` did, from its run.json summary."""
    describe = LINES.get(stage)
    try:
        text = describe(summary, paths) if describe and summary else ""
    except (KeyError, TypeError, ValueError):
        text = ""  # a stage summary of another shape: fall back to its raw form
    return text or json.dumps(summary, default=str)[:300]


def print_run_summary(
    summaries: dict[str, dict[str, Any]], paths: RunPaths, console: Console
) -> None:
    table = Table(title=f"lorapipe run: {paths.root}", show_header=False, title_justify="left")
    table.add_column("stage", style="bold")
    table.add_column("result", overflow="fold")
    for stage, summary in summaries.items():
        table.add_row(stage, stage_line(stage, summary, paths))
    for path, size in artifacts(paths):
        table.add_row("", f"{path}  {format_bytes(size)}")
    console.print(table)
    hints = []
    if paths.report.is_file():
        hints.append(f"open {paths.report} in a browser")
    if (paths.adapter / "adapter_config.json").is_file():
        hints.append(f"talk to the model: lorapipe chat {paths.root}")
    if hints:
        console.print("next: " + " · ".join(hints), soft_wrap=True)
