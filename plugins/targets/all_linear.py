"""The built-in ``all_linear`` fallback detector: every linear layer but the head."""

from __future__ import annotations

from typing import Any

from lorapipe.plugin import TargetDetector, TargetSelection, hookimpl


class AllLinearTargets(TargetDetector):
    """Any model: every linear layer (also 4/8-bit and GPT-2 Conv1D) except head and embeddings."""

    name = "all_linear"
    priority = 1000

    def detect(self, model: Any) -> TargetSelection | None:
        # Our own walk rather than peft's "all-linear": the report lists the names chosen.
        from lorapipe.plugin import adaptable_modules, short_names

        chosen = adaptable_modules(model)
        if not chosen:
            return None
        return TargetSelection(
            modules=short_names(model, chosen),
            reason=f"every linear layer except the output head and embeddings ({len(chosen)})",
        )


@hookimpl
def lorapipe_register_target_detectors(register):  # noqa: ANN001, ANN201 - pluggy hook
    register(AllLinearTargets)
