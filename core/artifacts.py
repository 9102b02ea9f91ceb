"""The run directory layout (ARCHITECTURE.md): a contract read by tests, users and tools."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from lorapipe.errors import UserError
from lorapipe.manifest import require_intact


@dataclass(frozen=True)
class RunPaths:
    """Where each stage reads and writes, under one ``output_dir``."""

    root: Path

    @property
    def resolved_config(self) -> Path:
        return self.root / "config.resolved.yaml"

    @property
    def run_json(self) -> Path:
        return self.root / "run.json"

    @property
    def data(self) -> Path:
        return self.root / "data"

    @property
    def train_data(self) -> Path:
        return self.data / "train"

    @property
    def validation_data(self) -> Path:
        return self.data / "validation"

    @property
    def test_data(self) -> Path:
        """Held out for the final scores only (``data.test``)."""
        return self.data / "test"

    @property
    def tokenizer(self) -> Path:
        return self.data / "tokenizer"

    @property
    def data_report(self) -> Path:
        return self.data / "report.json"

    @property
    def model_report(self) -> Path:
        return self.root / "model_report.json"

    @property
    def checkpoints(self) -> Path:
        return self.root / "checkpoints"

    def checkpoint(self, step: int) -> Path:
        return self.checkpoints / f"step-{step}"

    @property
    def adapter(self) -> Path:
        return self.root / "adapter"

    def require_adapter(self, action: str) -> Path:
        """``adapter/``, or a user error saying which stage makes it (``action``: what
        needed it, e.g. "evaluate")."""
        if not (self.adapter / "adapter_config.json").is_file():
            raise UserError(f"{self.adapter}: no adapter to {action}; run `lorapipe train` first")
        require_intact(self.adapter, "run `lorapipe train CONFIG` again")
        return self.adapter

    def require_data(self) -> None:
        """The prepared data, verified against its manifest."""
        if not (self.train_data.is_dir() and self.tokenizer.is_dir()):
            raise UserError(f"no prepared data in {self.data}; run `lorapipe prepare CONFIG` "
                            "first")
        require_intact(self.data, "run `lorapipe prepare CONFIG` again (it re-creates it)")

    @property
    def metrics(self) -> Path:
        return self.root / "metrics.jsonl"

    @property
    def eval_dir(self) -> Path:
        return self.root / "eval"

    @property
    def eval_report(self) -> Path:
        return self.eval_dir / "report.json"

    @property
    def eval_samples(self) -> Path:
        """A few held-out prompts with base and fine-tuned replies, for report.html."""
        return self.eval_dir / "samples.jsonl"

    @property
    def merged(self) -> Path:
        return self.root / "merged"

    @property
    def tensorboard(self) -> Path:
        return self.root / "tensorboard"

    @property
    def report(self) -> Path:
        """report.html: the whole run on one page, built from the other artifacts."""
        return self.root / "report.html"

    @property
    def exports(self) -> Path:
        return self.root / "export"

    def export_dir(self, exporter: str) -> Path:
        return self.exports / exporter

    @property
    def reference(self) -> Path:
        """dpo's precompute_reference: the base's values per training example."""
        return self.root / "reference"

    def artifacts(self) -> list[Path]:
        """Everything a run writes at the top of ``root``: what ``--overwrite`` removes."""
        return [self.resolved_config, self.run_json, self.data, self.model_report,
                self.checkpoints, self.reference, self.adapter, self.metrics, self.tensorboard,
                self.eval_dir,
                self.merged, self.exports, self.report]
