"""What every stage receives: the run plan, the run's paths, and how the run was started."""

from __future__ import annotations

import os
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING

from lorapipe.artifacts import RunPaths
from lorapipe.components import RunInfo
from lorapipe.config import PipelineConfig
from lorapipe.plan import RunPlan

if TYPE_CHECKING:
    import torch


@dataclass
class RunContext:
    plan: RunPlan
    resume: bool = False
    allow_config_change: bool = False
    config_file: Path | None = None  # the YAML the plan came from, when there is one

    @property
    def config(self) -> PipelineConfig:
        return self.plan.config

    @cached_property
    def paths(self) -> RunPaths:
        return RunPaths(Path(os.path.expandvars(os.path.expanduser(self.config.output_dir))))

    def read_paths(self) -> list[Path]:
        """What the run reads and so must never be inside ``output_dir``: the config file
        and every file a loader's ``path`` option names."""
        from lorapipe.data.files import expand_paths

        found = [self.config_file] if self.config_file is not None else []
        for loader in self.plan.loaders():
            patterns = getattr(loader.options, "path", None)
            if isinstance(patterns, list):
                found += expand_paths(patterns)
        return found

    @cached_property
    def config_hash(self) -> str:
        return self.plan.config_hash()

    @cached_property
    def device(self) -> str:
        """The device this process trains and evaluates on."""
        from lorapipe.model.dtypes import default_device

        return default_device()

    @cached_property
    def dtype(self) -> torch.dtype:
        """``model.dtype`` resolved for ``device`` (``auto``: bf16 where the hardware has it)."""
        from lorapipe.model.dtypes import resolve_dtype

        return resolve_dtype(self.config.model.dtype, device=self.device)

    @cached_property
    def run_info(self) -> RunInfo:
        """What components may know about this run (provenance, where to write)."""
        return RunInfo(paths=self.paths, base_model=self.config.model.name_or_path,
                       config_hash=self.config_hash, quantizer=self.plan.quantizer.name,
                       max_length=self.config.data.max_length,
                       trust_remote_code=self.config.model.trust_remote_code)
