"""The built-in ``llama`` target detector: Llama-layout projection names."""

from __future__ import annotations

from typing import Literal

from lorapipe import hookimpl
from lorapipe.components import Options, TargetDetector


class LlamaTargetOptions(Options):
    preset: Literal["all", "attention", "mlp"] = "all"


class LlamaTargets(TargetDetector):
    """Llama-layout models (Llama, Mistral, Qwen2, ...): q/k/v/o and gate/up/down projections."""

    name = "llama"
    priority = 10
    Options = LlamaTargetOptions


@hookimpl
def lorapipe_register_target_detectors(register):  # noqa: ANN001, ANN201 - pluggy hook
    register(LlamaTargets)
