"""Reading a run directory's artifacts for the report, each one optional.

The report must describe a run that is still going, stopped half-way or failed, so
every reader returns ``None`` (or nothing) for an artifact that is not there, and a
torn last line of metrics.jsonl (a killed run) is skipped rather than fatal.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np


def read_json(path: Path) -> Any | None:
    """The parsed file, or ``None`` when it does not exist."""
    if not path.is_file():
        return None
    return json.loads(path.read_text(encoding="utf-8"))


def read_jsonl(path: Path) -> list[dict[str, Any]] | None:
    """One object per line, skipping lines a killed writer left torn."""
    if not path.is_file():
        return None
    records = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(record, dict):
            records.append(record)
    return records


def token_lengths(split_dir: Path) -> tuple[np.ndarray, np.ndarray] | None:
    """Tokens per sample and trained tokens per sample (labels other than -100) of a
    prepared split, read from its Arrow files without loading the dataset library."""
    state = read_json(split_dir / "state.json")
    if state is None:
        return None
    import pyarrow as pa

    totals, trained = [], []
    for entry in state.get("_data_files", []):
        with pa.memory_map(str(split_dir / entry["filename"])) as source:
            for batch in pa.ipc.open_stream(source):  # batch by batch: memory stays small
                labels = batch.column("labels")
                offsets = labels.offsets.to_numpy()
                values = labels.values.to_numpy(zero_copy_only=False)
                counted = np.concatenate([[0], np.cumsum(values != -100)])
                totals.append(np.diff(offsets))
                trained.append(counted[offsets[1:]] - counted[offsets[:-1]])
    if not totals:
        return np.zeros(0, dtype=int), np.zeros(0, dtype=int)
    return np.concatenate(totals), np.concatenate(trained)
