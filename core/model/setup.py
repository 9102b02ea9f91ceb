"""What ``model/`` needs to build the model a run trains, given explicitly.

``model/`` sits below the plan: it never sees the registry, the plan or the run context.
The run context resolves these once (``RunContext.model_setup``) and hands them down.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from lorapipe.components import Quantizer, TargetDetector
from lorapipe.config import PipelineConfig

if TYPE_CHECKING:
    import torch


@dataclass(frozen=True)
class ModelSetup:
    config: PipelineConfig
    quantizer: Quantizer
    # asked in order for the adapter targets; ``detector_named``: the user picked the one
    # detector, so its "not recognised" is an error rather than a pass to the next
    detectors: tuple[TargetDetector, ...]
    detector_named: bool
    # every installed weight-quantizing quantizer, for the memory advice
    weight_quantizers: tuple[Quantizer, ...]
    device: str
    dtype: torch.dtype
