"""metrics.jsonl (one JSON object per logged step, evaluation or event) and the trackers it
feeds (trackers.py); what one optimizer step reports (``StepResult``) and the window of
steps one line sums up (``LogWindow``).

The log is append-only, one line per record, flushed at once, so it can be tailed while
training runs. A resumed run first drops the records written after its checkpoint
(rewriting the file atomically), so the log reads as one uninterrupted run.
"""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from lorapipe.atomic import atomic_write_text
from lorapipe.train.trackers import Trackers

if TYPE_CHECKING:
    from lorapipe.artifacts import RunPaths


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


def open_log(paths: RunPaths, report_to: list[str], *, resume_step: int | None,
             tracker_ids: dict[str, str], run_config: dict[str, Any] | None) -> MetricsLog:
    """The main process's log, with the ``train.report_to`` trackers behind it.

    ``tracker_ids`` is the state's dict, which the trackers fill, so a checkpoint keeps
    the W&B and MLflow run ids a resumed run continues. The run's config is stored only
    when it starts from the beginning: a resumed run's trackers already have it.
    """
    trackers = None
    if report_to:
        trackers = Trackers(report_to, paths=paths, resume_step=resume_step, ids=tracker_ids)
        if resume_step is None and run_config is not None:
            trackers.store_config(run_config)
    return MetricsLog(paths.metrics, resume_step=resume_step, trackers=trackers)


@dataclasses.dataclass(frozen=True)
class StepResult:
    """What one optimizer step did, summed over all processes (the same on every one)."""

    loss: float  # mean over the step's units: the objective's count (sft: trainable tokens)
    grad_norm: float  # before clipping
    lr: float  # the update's lr; the lowest group's (LoRA+ B groups get a multiple)
    applied: bool  # False: the loss or gradient was non-finite and the update skipped
    units: int  # what the loss is averaged over: the objective's count (sft: trainable tokens)
    trainable_tokens: int  # tokens the loss covers (both sides of a preference pair)
    real_tokens: int  # non-pad tokens: what throughput counts
    batch_tokens: int  # incl. padding: what the padding fraction compares with
    spike: str | None = None  # why this finite step counts as a spike (guard.SpikeGuard)
    # the objective's metrics, means over the same units as the loss
    metrics: dict[str, float] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass
class LogWindow:
    """The steps since the last log line, summed; closed into one metrics.jsonl record."""

    started: float = dataclasses.field(default_factory=time.perf_counter)
    loss_sum: float = 0.0  # unit-weighted, so the record's loss is the window's unit mean
    units: int = 0  # the objective's count (sft: trainable tokens; dpo: pairs)
    trainable_tokens: int = 0
    real_tokens: int = 0
    batch_tokens: int = 0
    metrics: dict[str, float] = dataclasses.field(default_factory=dict)  # weighted like loss

    @classmethod
    def resumed(cls, sums: dict[str, Any]) -> LogWindow:
        """The window a checkpoint was taken in, from ``sums()`` saved in its state."""
        # a checkpoint from before objectives had units counted tokens (sft's unit)
        units = sums.get("units", sums.get("trainable_tokens", 0))
        return cls(**{**sums, "units": units, "metrics": dict(sums.get("metrics", {}))})

    def sums(self) -> dict[str, Any]:
        """What a checkpoint keeps, so the first line after a resume covers the same steps
        and tokens as an uninterrupted run's (its wall time cannot be kept)."""
        return {"loss_sum": self.loss_sum, "units": self.units,
                "trainable_tokens": self.trainable_tokens,
                "real_tokens": self.real_tokens, "batch_tokens": self.batch_tokens,
                "metrics": dict(self.metrics)}

    def add(self, result: StepResult) -> None:
        self.loss_sum += result.loss * result.units
        self.units += result.units
        self.trainable_tokens += result.trainable_tokens
        self.real_tokens += result.real_tokens
        self.batch_tokens += result.batch_tokens
        for name, value in result.metrics.items():
            self.metrics[name] = self.metrics.get(name, 0.0) + value * result.units

    def record(self, *, step: int, epoch: float, last: StepResult,
               memory: dict[str, Any]) -> dict[str, Any]:
        """The metrics.jsonl line: window means and throughput, the last step's lr and norm."""
        seconds = time.perf_counter() - self.started
        return {
            "step": step,
            "epoch": epoch,
            "loss": self.loss_sum / max(self.units, 1),
            **{name: value / max(self.units, 1) for name, value in self.metrics.items()},
            "lr": last.lr,
            "grad_norm": last.grad_norm,
            "trainable_tokens": self.trainable_tokens,
            "tokens_per_s": self.real_tokens / max(seconds, 1e-9),
            "seconds": round(seconds, 4),  # the window's wall time (since the resume, if any)
            "padding_fraction": 1 - self.real_tokens / max(self.batch_tokens, 1),
            "memory": memory,
        }
