"""The built-in ``all_linear`` fallback detector: every linear layer but the head."""

from __future__ import annotations

from lorapipe import hookimpl
from lorapipe.components import TargetDetector


class AllLinearTargets(TargetDetector):
    """Any model: every linear layer (also 4/8-bit and GPT-2 Conv1D) except head and embeddings."""

    name = "all_linear"
    priority = 1000


@hookimpl
def lorapipe_register_target_detectors(register):  # noqa: ANN001, ANN201 - pluggy hook
    register(AllLinearTargets)
