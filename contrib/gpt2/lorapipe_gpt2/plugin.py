"""Entry point of ``lorapipe-gpt2``: registers the ``gpt2`` target detector."""

from __future__ import annotations

from lorapipe.plugin import hookimpl
from lorapipe_gpt2.targets import Gpt2Targets


@hookimpl
def lorapipe_register_target_detectors(register):  # noqa: ANN001, ANN201 - pluggy hook
    register(Gpt2Targets)
