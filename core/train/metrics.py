"""metrics.jsonl (one JSON object per logged step, evaluation or event), and the trackers.

The log is append-only, one line per record, flushed at once, so it can be tailed while
training runs. A resumed run first drops the records written after its checkpoint
(rewriting the file atomically), so the log reads as one uninterrupted run.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from lorapipe.atomic import atomic_write_text
from lorapipe.train.trackers import Trackers


class MetricsLog:
    def __init__(self, path: Path, *, resume_step: int | None, trackers: Trackers | None = None):
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        self._truncate_after(resume_step)
        self._file = path.open("a", encoding="utf-8")
        self._trackers = trackers

    def _truncate_after(self, step: int | None) -> None:
        if not self.path.exists():
            return
        if step is None:  # a fresh run starts a fresh log
            self.path.unlink()
            return
        kept = []
        for line in self.path.read_text(encoding="utf-8").splitlines():
            try:
                record = json.loads(line)
            except json.JSONDecodeError:  # a line torn by kill -9
                continue
            if record.get("step", 0) <= step:
                kept.append(line + "\n")
        atomic_write_text(self.path, "".join(kept))

    def write(self, record: dict[str, Any]) -> None:
        self._file.write(json.dumps(record) + "\n")
        self._file.flush()
        if self._trackers is not None:
            self._trackers.log(record)

    def close(self) -> None:
        self._file.close()
        if self._trackers is not None:
            self._trackers.close()

