"""What every stage receives: the resolved config, the registry and the run's paths."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from lorapipe.artifacts import RunPaths
from lorapipe.config import PipelineConfig
from lorapipe.registry import Registry


@dataclass
class RunContext:
    config: PipelineConfig
    registry: Registry
    resume: bool = False
    allow_config_change: bool = False

    @property
    def paths(self) -> RunPaths:
        return RunPaths(Path(self.config.output_dir))
