"""report.html: one self-contained page describing a run, built from its artifacts only.

Reading nothing but the run directory means ``lorapipe report RUN_DIR`` describes any
run, finished, still training or stopped half-way, and gives the same page the end of
``lorapipe run`` writes. A missing artifact turns its section into a sentence saying
which stage makes it. The page needs no network and runs no script: the charts are
inline SVG, the styles inline, and a Content-Security-Policy forbids loading anything.
"""

from __future__ import annotations

import datetime
import json
from collections.abc import Callable
from html import escape
from pathlib import Path
from typing import Any

from lorapipe.artifacts import RunPaths
from lorapipe.atomic import atomic_write_text
from lorapipe.errors import UserError
from lorapipe.report.sources import read_json, read_jsonl, token_lengths
from lorapipe.report.svg import Series, histogram, line_chart
from lorapipe.rundir import MARKER
from lorapipe.summary import stage_line
from lorapipe.units import format_bytes

# Curve colours (Tableau 10); tests look for LOSS_COLOR's pixels in a screenshot.
LOSS_COLOR = "#1f77b4"
EVAL_COLOR = "#ff7f0e"
COLORS = ("#2ca02c", "#9467bd", "#8c564b", "#d62728", "#e377c2", "#17becf")

# Training-loop events worth a row; "memory" transitions get their own table, "end" is routine.
QUIET_EVENTS = {"memory", "end"}

STYLE = """
body{font:14px/1.45 system-ui,sans-serif;margin:0 auto;max-width:1180px;padding:16px 24px;
color:#222;background:#fff}
h1{font-size:22px;margin:8px 0 2px}h2{font-size:18px;border-bottom:1px solid #ddd;
padding-bottom:4px;margin-top:28px}h3{font-size:15px;margin:16px 0 6px}
table{border-collapse:collapse;margin:6px 0}td,th{border:1px solid #ddd;padding:3px 8px;
text-align:left;vertical-align:top}th{background:#f4f4f4}td.n{text-align:right;
font-variant-numeric:tabular-nums}
.charts{display:flex;flex-wrap:wrap;gap:8px}
svg.chart{border:1px solid #e4e4e4;background:#fff;font-size:11px}
svg.chart .title{font-size:13px;font-weight:600}svg .axis{stroke:#555;fill:none}
svg .grid{stroke:#eee}svg polyline{fill:none;stroke-width:2}
.missing{color:#8a6d3b;background:#fcf8e3;padding:6px 10px;border-radius:4px}
.muted{color:#666}pre{background:#f7f7f7;padding:10px;overflow:auto;font-size:12px}
.samples{display:grid;grid-template-columns:repeat(3,minmax(0,1fr));gap:12px}
.samples>div{overflow-wrap:anywhere}
.reply{white-space:pre-wrap;background:#f7f7f7;padding:6px;border-radius:4px;margin:2px 0 8px}
"""


def _missing(text: str) -> str:
    return f'<p class="missing">{escape(text)}</p>'


def _table(header: list[str] | None, rows: list[list[Any]]) -> str:
    """A table of ``rows``, numbers right-aligned; ``header`` None for key/value tables."""
    head = "<tr>" + "".join(f"<th>{escape(h)}</th>" for h in header) + "</tr>" if header else ""
    body = "".join(
        "<tr>" + "".join(
            f'<td class="n">{escape(_fmt(cell))}</td>' if isinstance(cell, int | float)
            else f"<td>{escape(_fmt(cell))}</td>" for cell in row) + "</tr>"
        for row in rows)
    return f"<table>{head}{body}</table>"


def _fmt(value: Any) -> str:
    if value is None:
        return "—"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


# --- sections --------------------------------------------------------------------------


def _overview(paths: RunPaths) -> str:
    record = read_json(paths.run_json)
    if record is None:
        return _missing("No run.json: no stage has started in this directory.")
    rows = []
    for name, stage in record.get("stages", {}).items():
        summary = stage.get("summary")
        detail = stage.get("error") or (stage_line(name, summary, paths) if summary else "")
        rows.append([name, stage.get("status"), stage.get("seconds"), detail])
    return _table(["stage", "status", "seconds", "result"], rows)


def _training(paths: RunPaths) -> str:
    records = read_jsonl(paths.metrics)
    if not records:
        return _missing("No metrics.jsonl records yet: training has not logged a step "
                        "(`lorapipe train` writes them).")
    steps = [r for r in records if "loss" in r and "event" not in r]
    evals = [r for r in records if "eval_loss" in r]

    def points(key: str, rows: list[dict[str, Any]]) -> list[tuple[float, float]]:
        return [(r["step"], r[key]) for r in rows if isinstance(r.get(key), int | float)]

    charts = [
        line_chart("loss", [Series("train loss", points("loss", steps), LOSS_COLOR),
                            Series("eval loss", points("eval_loss", evals), EVAL_COLOR,
                                   markers=True)]),
        line_chart("learning rate", [Series("lr", points("lr", steps), COLORS[0])], zero=True),
        line_chart("gradient norm (before clipping)",
                   [Series("grad norm", points("grad_norm", steps), COLORS[1])], zero=True),
        line_chart("trained tokens/s",
                   [Series("tokens/s", points("tokens_per_s", steps), COLORS[2])], zero=True),
        _memory_chart(steps),
        *_objective_charts(steps, evals, points),
    ]
    best = [r for r in evals if isinstance(r.get("best_eval_loss"), int | float)]
    lead = (f"<p>{len(steps)} logged steps, last step {steps[-1]['step']}, last loss "
            f"{_fmt(steps[-1]['loss'])}" if steps else "<p>no training step logged yet")
    lead += (f"; best eval loss {_fmt(best[-1]['best_eval_loss'])}.</p>" if best else ".</p>")
    return lead + '<div class="charts">' + "".join(charts) + "</div>" + _events(records)


# What every logged step holds; anything else numeric is the objective's own metric.
_STEP_KEYS = {"step", "epoch", "loss", "lr", "grad_norm", "trainable_tokens", "tokens_per_s",
              "seconds", "padding_fraction", "memory"}


def _objective_charts(steps: list[dict[str, Any]], evals: list[dict[str, Any]],
                      points: Callable[[str, list[dict[str, Any]]], list[tuple[float, float]]]
                      ) -> list[str]:
    """A chart per metric the objective reports (a preference objective's rewards,
    margins and accuracy), train and validation."""
    names: list[str] = []
    for record in steps:
        names += [k for k, v in record.items() if k not in _STEP_KEYS and k not in names
                  and isinstance(v, int | float) and not isinstance(v, bool)]
    return [line_chart(name.replace("_", " "),
                       [Series(f"train {name}", points(name, steps), LOSS_COLOR),
                        Series(f"eval {name}", points(f"eval_{name}", evals), EVAL_COLOR,
                               markers=True)])
            for name in names]


def _memory_chart(steps: list[dict[str, Any]]) -> str:
    """Every ``*_bytes`` reading of the logged steps (RSS, CUDA), in MiB or GiB so the
    axis gets round ticks."""
    keys: list[str] = []
    for record in steps:
        keys += [k for k in record.get("memory") or {} if k.endswith("_bytes") and k not in keys]
    readings = {key: [(r["step"], r["memory"][key]) for r in steps
                      if isinstance((r.get("memory") or {}).get(key), int | float)]
                for key in keys}
    largest = max((value for points in readings.values() for _, value in points), default=0)
    unit, scale = ("GiB", 2**30) if largest >= 4 * 2**30 else ("MiB", 2**20)
    series = [Series(key.removesuffix("_bytes").replace("_", " "),
                     [(step, value / scale) for step, value in points], COLORS[3 + index % 3])
              for index, (key, points) in enumerate(readings.items())]
    return line_chart(f"memory ({unit})", series, zero=True)


def _events(records: list[dict[str, Any]]) -> str:
    html = ""
    transitions = [r for r in records if r.get("event") == "memory"]
    if transitions:
        keys = sorted({k for r in transitions for k in r if k.endswith("_bytes")})
        rows = [[r.get("stage")] + [format_bytes(r[k]) if k in r else None for k in keys]
                for r in transitions]
        names = [k.removesuffix("_bytes").replace("_", " ") for k in keys]
        html += "<h3>Memory at stage transitions</h3>" + _table(["stage", *names], rows)
    events = [r for r in records if "event" in r and r["event"] not in QUIET_EVENTS]
    if events:
        rows = [[r.get("step"), r["event"],
                 json.dumps({k: v for k, v in r.items() if k not in ("step", "event")})]
                for r in events]
        html += "<h3>Training events</h3>" + _table(["step", "event", "detail"], rows)
    return html


def _evaluation(paths: RunPaths) -> str:
    report = read_json(paths.eval_report)
    if report is None:
        return _missing("No eval/report.json: the evaluate stage has not run.")
    rows = []
    splits = set()
    for name, result in report.items():
        splits.add(result.get("split"))
        intervals = (result.get("ci95") or {}).get("change") or {}
        for metric, base in (result.get("base") or {}).items():
            interval = intervals.get(metric)
            shown = f"{interval[0]:+.4g} to {interval[1]:+.4g}" if interval else None
            rows.append([name, metric, base, (result.get("finetuned") or {}).get(metric),
                         (result.get("change") or {}).get(metric), shown])
        for data, general in (result.get("general") or {}).items():
            flag = " (forgetting)" if general.get("forgetting") else ""
            rise = general.get("increase")
            rows.append([name, f"on {data}{flag}", general.get("base"), general.get("finetuned"),
                         f"{rise:+.1%}" if isinstance(rise, int | float) else None, None])
    split = " and ".join(sorted(s for s in splits if s)) or "held-out"
    return (f"<p>Scores on the {escape(split)} split, base model vs fine-tuned.</p>"
            + _table(["evaluator", "metric", "base", "fine-tuned", "change",
                      "change, 95% CI"], rows))


def _reply(text: Any) -> str:
    """A reply as it was, or a note where it shows nothing (an empty box reads as a bug)."""
    text = "" if text is None else str(text)
    if text.strip():
        return escape(text)
    return f'<span class="muted">(no visible text: {len(text)} whitespace characters)</span>'


def _samples(paths: RunPaths) -> str:
    samples = read_jsonl(paths.eval_samples)
    if not samples:
        return _missing("No eval/samples.jsonl: the evaluate stage has not run.")
    cards = []
    for sample in samples:
        prompt = "".join(f"<div><b>{escape(str(m.get('role')))}:</b> "
                         f"{escape(str(m.get('content')))}</div>"
                         for m in sample.get("prompt", []))
        replies = "".join(f'<div class="muted">{label}</div><div class="reply">'
                          f"{_reply(sample.get(key))}</div>"
                          for label, key in (("reference", "reference"), ("base", "base"),
                                             ("fine-tuned", "finetuned")))
        cards.append(f"<div>{prompt}{replies}</div>")
    return ("<p>Greedy replies to held-out prompts.</p>"
            f'<div class="samples">{"".join(cards)}</div>')


def _data(paths: RunPaths) -> str:
    report = read_json(paths.data_report)
    if report is None:
        return _missing("No data/report.json: the prepare stage has not run.")
    read = report.get("records_read") or 0
    sizes = (report.get("split") or {}).get("sizes") or {}
    trained = report.get("trainable_tokens") or {}
    counts = [["records read", read], ["kept", report.get("kept")],
              ["dropped", report.get("dropped_total")], ["truncated", report.get("truncated")]]
    counts += [[f"{split} samples ({trained.get(split, '?')} trained tokens)", size]
               for split, size in sizes.items()]
    html = _table(["", "count"], counts)
    dropped = report.get("dropped") or {}
    if dropped:
        rows = []
        for reason, count in dropped.items():
            first = ((report.get("examples") or {}).get(reason) or [{}])[0]
            rows.append([reason, count, f"{count / read:.1%}" if read else None,
                         f"{first.get('location', '')}: {first.get('detail', '')}"])
        html += "<h3>Dropped, by reason</h3>" + _table(
            ["reason", "records", "of read", "first example"], rows)
    else:
        html += "<p>No record was dropped.</p>"
    stats = report.get("tokens") or {}
    if stats:
        html += "<h3>Tokens per sample</h3>" + _table(
            ["part", "min", "mean", "p50", "p95", "max"],
            [[part, *(s.get(k) for k in ("min", "mean", "p50", "p95", "max"))]
             for part, s in stats.items()])
    lengths = token_lengths(paths.train_data)
    if lengths is None:
        return html + _missing("No data/train: length histograms need the prepared data.")
    total, trainable = lengths
    return html + '<div class="charts">' + histogram(
        "train split: tokens per sample", total.tolist(), x_label="tokens",
        color=COLORS[5]) + histogram(
        "train split: trained tokens per sample", trainable.tolist(),
        x_label="trained tokens (labels ≠ -100)", color=COLORS[0]) + "</div>"


def _model(paths: RunPaths) -> str:
    report = read_json(paths.model_report)
    if report is None:
        return _missing("No model_report.json: the train stage has not loaded the model.")
    model, quant = report.get("model") or {}, report.get("quantizer") or {}
    adapter, params = report.get("adapter") or {}, report.get("parameters") or {}
    rows = [["base model", model.get("name_or_path")],
            ["architecture", model.get("architecture")],
            ["quantizer", quant.get("name")],
            ["LoRA r / alpha / dropout",
             f"{adapter.get('r')} / {adapter.get('alpha')} / {adapter.get('dropout')}"],
            ["targets", ", ".join(params.get("per_target") or {})],
            ["trainable parameters",
             f"{_fmt(params.get('trainable'))} of {_fmt(params.get('total'))}"]]
    rows += [[f"not adapted: {entry['name']}",
              f"{entry['layers']} × {_fmt(entry['parameters'] // max(entry['layers'], 1))} "
              f"parameters: {entry['reason']}"]
             for entry in (report.get("targets") or {}).get("not_adapted") or []]
    return _table(None, rows)


def _config(paths: RunPaths) -> str:
    if not paths.resolved_config.is_file():
        return _missing("No config.resolved.yaml: no stage has started.")
    return f"<pre>{escape(paths.resolved_config.read_text(encoding='utf-8'))}</pre>"


def _versions(paths: RunPaths) -> str:
    record = read_json(paths.run_json) or {}
    versions = record.get("versions")
    if not versions:
        return _missing("No versions recorded in run.json yet.")
    rows = [[name, version or "not installed"] for name, version in versions.items()]
    return (f"<p>config hash <code>{escape(str(record.get('config_hash')))}</code></p>"
            + _table(["package", "version"], rows))


SECTIONS: list[tuple[str, Callable[[RunPaths], str]]] = [
    ("Stages", _overview),
    ("Training", _training),
    ("Evaluation", _evaluation),
    ("Sample replies", _samples),
    ("Data", _data),
    ("Model", _model),
    ("Configuration", _config),
    ("Versions", _versions),
]


def _section(title: str, build: Callable[[RunPaths], str], paths: RunPaths) -> str:
    slug = title.lower().replace(" ", "-")
    try:
        body = build(paths)
    except (OSError, ValueError, KeyError, TypeError, AttributeError, IndexError) as err:
        # a damaged or foreign artifact costs its section, never the report
        body = _missing(f"Could not read this part of the run: {type(err).__name__}: {err}")
    return f'<section id="{slug}"><h2>{escape(title)}</h2>{body}</section>'


def render(paths: RunPaths) -> str:
    """The page for the run in ``paths.root``, as HTML text."""
    now = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    body = "".join(_section(title, build, paths) for title, build in SECTIONS)
    return (
        "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
        "<meta http-equiv=\"Content-Security-Policy\" "
        "content=\"default-src 'none'; style-src 'unsafe-inline'\">"
        f"<title>lorapipe report: {escape(paths.root.name)}</title>"
        f"<style>{STYLE}</style></head><body>"
        f"<h1>lorapipe report: {escape(paths.root.name)}</h1>"
        f'<p class="muted">{escape(str(paths.root))} · written {now}</p>'
        f"{body}</body></html>\n"
    )


def write_report(root: Path) -> Path:
    """Write ``root/report.html`` atomically and return its path; ``root`` must be a run
    directory (a user error otherwise, before anything is written)."""
    paths = RunPaths(root.expanduser())
    if not paths.root.is_dir():
        raise UserError(f"{paths.root}: not a directory; give the output_dir of a run")
    if not (paths.run_json.is_file() or (paths.root / MARKER).is_file()):
        raise UserError(f"{paths.root}: not a lorapipe run directory (no run.json); give "
                        "the output_dir of a run")
    atomic_write_text(paths.report, render(paths))
    return paths.report
