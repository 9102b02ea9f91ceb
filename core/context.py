"""What every stage receives: the run plan, the run's paths, and how the run was started."""

from __future__ import annotations

import os
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING

from lorapipe.artifacts import RunPaths
from lorapipe.components import Quantizer, RunInfo
from lorapipe.config import PipelineConfig
from lorapipe.model.setup import ModelSetup
from lorapipe.plan import RunPlan

if TYPE_CHECKING:
    import torch


@dataclass
class RunContext:
    plan: RunPlan
    resume: bool = False
    allow_config_change: bool = False
    config_file: Path | None = None  # the YAML the plan came from, when there is one
    # the run directory, when it was opened by its path (``lorapipe chat RUN_DIR``: the
    # directory may have moved since its config's output_dir was written)
    root: Path | None = None

    @property
    def config(self) -> PipelineConfig:
        return self.plan.config

    @cached_property
    def paths(self) -> RunPaths:
        """The run directory's layout: ``output_dir`` with ``~`` and ``$VARS`` expanded."""
        if self.root is not None:
            return RunPaths(self.root)
        return RunPaths(Path(os.path.expandvars(os.path.expanduser(self.config.output_dir))))

    @property
    def is_main_process(self) -> bool:
        """Whether this is the launcher's rank 0 (or the only process): the one that owns
        the run directory and writes what every process shares. torchrun and accelerate
        set ``RANK``; reading it needs no process group, so it works before one exists."""
        return int(os.environ.get("RANK", "0")) == 0

    def read_paths(self) -> list[Path]:
        """What the run reads and so must never be inside ``output_dir``: the config file
        and every file a loader's ``path`` option names."""
        from lorapipe.authoring.file_loader import expand_paths

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
    def model_setup(self) -> ModelSetup:
        """What ``model/`` needs to build the model this run trains."""
        plan = self.plan
        weight_quantizers = tuple(
            q for q in plan.registry.with_defaults("quantizer", "model.quantizer")
            if isinstance(q, Quantizer) and q.quantized)
        return ModelSetup(config=self.config, quantizer=plan.quantizer,
                          detectors=plan.detectors, detector_named=plan.detector_named,
                          weight_quantizers=weight_quantizers, device=self.device,
                          dtype=self.dtype)

    @cached_property
    def run_info(self) -> RunInfo:
        """What components may know about this run (provenance, where to write)."""
        return RunInfo(paths=self.paths, base_model=self.config.model.name_or_path,
                       config_hash=self.config_hash, quantizer=self.plan.quantizer.name,
                       max_length=self.config.data.max_length,
                       trust_remote_code=self.config.model.trust_remote_code)
