"""Helpers shared by the prepare-stage tests (imported by name: tests/ has no packages)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


def write_jsonl(path: Path, rows: list[Any]) -> Path:
    """Rows are dicts (written as JSON) or raw strings/bytes (written as they are)."""
    with path.open("wb") as handle:
        for row in rows:
            if isinstance(row, bytes):
                handle.write(row + b"\n")
            elif isinstance(row, str):
                handle.write(row.encode() + b"\n")
            else:
                handle.write(json.dumps(row).encode() + b"\n")
    return path


def chat(i: int, turns: int = 1, system: bool = False, **extra: Any) -> dict[str, Any]:
    messages = [{"role": "system", "content": "You are terse."}] if system else []
    for t in range(turns):
        messages += [{"role": "user", "content": f"Question {i}.{t}: what is {i} plus {t}?"},
                     {"role": "assistant", "content": f"{i} plus {t} is {i + t}."}]
    return {"messages": messages, **extra}


def read_report(out: Path) -> dict[str, Any]:
    return json.loads((out / "data" / "report.json").read_text())
