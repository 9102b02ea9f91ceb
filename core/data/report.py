"""Accounting for every record: why each dropped one was dropped, and token statistics.

Every drop is counted per reason in ``data/report.json``, with the first few examples,
and written to ``data/dropped.jsonl`` (location, reason, detail) so nothing is lost
silently, up to ``LISTED_PER_REASON`` rows per reason: a small gzip of a billion
``{}`` lines must not become a dropped list larger than the disk (the rest are counted,
as ``dropped_unlisted``).
"""

from __future__ import annotations

import json
from collections import Counter
from typing import IO, Any

import numpy as np
from rich.console import Console
from rich.table import Table

from lorapipe.errors import UserError

EXAMPLES_PER_REASON = 5
LISTED_PER_REASON = 100_000


class DropLog:
    """Counts dropped records per reason; in strict mode the first one is an error."""

    def __init__(self, strict: bool, sink: IO[str]) -> None:
        self.strict = strict
        self.sink = sink
        self.read = 0
        self.counts: Counter[str] = Counter()
        self.unlisted: Counter[str] = Counter()  # past LISTED_PER_REASON
        self.examples: dict[str, list[dict[str, str]]] = {}

    def drop(self, reason: str, location: str, detail: str) -> None:
        if self.strict:
            raise UserError(
                f"{location}: {reason}: {detail} (data.strict is true; fix this record, or "
                "set data.strict: false to skip and count bad records)"
            )
        self.counts[reason] += 1
        examples = self.examples.setdefault(reason, [])
        if len(examples) < EXAMPLES_PER_REASON:
            examples.append({"location": location, "detail": detail})
        if self.counts[reason] > LISTED_PER_REASON:
            self.unlisted[reason] += 1
            return
        self.sink.write(json.dumps({"location": location, "reason": reason,
                                    "detail": detail}) + "\n")

    @property
    def dropped(self) -> int:
        return sum(self.counts.values())

    def as_dict(self) -> dict[str, Any]:
        return {
            "records_read": self.read,
            "kept": self.read - self.dropped,
            "dropped": dict(sorted(self.counts.items())),
            "dropped_total": self.dropped,
            "dropped_unlisted": dict(sorted(self.unlisted.items())),
            "duplicates": self.counts.get("duplicate", 0),
            "examples": {k: self.examples[k] for k in sorted(self.examples)},
        }


def length_stats(values: np.ndarray) -> dict[str, float]:
    if len(values) == 0:
        return {"min": 0, "mean": 0.0, "p50": 0.0, "p95": 0.0, "max": 0}
    return {
        "min": int(values.min()),
        "mean": round(float(values.mean()), 2),
        "p50": float(np.percentile(values, 50)),
        "p95": float(np.percentile(values, 95)),
        "max": int(values.max()),
    }


def token_stats(total: np.ndarray, trainable: np.ndarray) -> dict[str, Any]:
    """Lengths of the whole sample, its trained part ("response") and the rest ("prompt")."""
    return {
        "total": length_stats(total),
        "prompt": length_stats(total - trainable),
        "response": length_stats(trainable),
    }


def print_summary(report: dict[str, Any], console: Console) -> None:
    table = Table(title="prepare: data summary")
    for column in ("", "count", "first example"):
        table.add_column(column, justify="right" if column == "count" else "left")
    table.add_row("records read", str(report["records_read"]), "")
    for reason, count in report["dropped"].items():
        first = report["examples"][reason][0]
        table.add_row(f"dropped: {reason}", str(count), f"{first['location']}: {first['detail']}")
    for reason, count in report.get("dropped_unlisted", {}).items():
        table.add_row(f"  not in dropped.jsonl: {reason}", str(count),
                      f"only the first {LISTED_PER_REASON:,} per reason are listed")
    table.add_row("truncated", str(report["truncated"]), "")
    table.add_row("kept", str(report["kept"]), "")
    for origin, count in report["added_samples"].items():
        if count:
            table.add_row(f"added samples: {origin}", str(count), "")
    for split, size in report["split"]["sizes"].items():
        table.add_row(f"{split} samples", str(size), "")
        table.add_row(f"{split} trainable tokens", str(report["trainable_tokens"][split]), "")
    total = report["tokens"]["total"]
    table.add_row("tokens/sample min/mean/p95/max",
                  f"{total['min']}/{total['mean']}/{total['p95']:g}/{total['max']}", "")
    console.print(table)
