"""The built-in ``all_linear`` fallback detector: every linear layer but the head, and
the fused expert weights of mixture-of-experts models."""

from __future__ import annotations

from typing import Any

from lorapipe.plugin import Options, TargetDetector, TargetSelection, hookimpl


class AllLinearOptions(Options):
    # false: adapt attention and dense layers only, not the (fused) experts
    experts: bool = True


class AllLinearTargets(TargetDetector):
    """Any model: every linear layer (also 4/8-bit and GPT-2 Conv1D) except head,
    embeddings and routers, and the experts of a mixture-of-experts model."""

    name = "all_linear"
    priority = 1000
    Options = AllLinearOptions

    def detect(self, model: Any) -> TargetSelection | None:
        # Our own walk rather than peft's "all-linear": the report lists the names chosen,
        # and peft's leaves out transformers 5's fused experts, where most MoE weights are.
        from lorapipe.plugin import (
            adaptable_modules,
            expert_parameters,
            short_names,
            short_parameter_names,
        )

        chosen = adaptable_modules(model)
        experts = expert_parameters(model) if self.options.experts else {}
        if not chosen and not experts:
            return None
        reason = f"every linear layer except the output head, embeddings and routers " \
                 f"({len(chosen)})"
        if experts:
            reason += f", and the fused expert weights ({len(experts)})"
        return TargetSelection(
            modules=short_names(model, chosen),
            parameters=short_parameter_names(model, experts),
            reason=reason,
        )


@hookimpl
def lorapipe_register_target_detectors(register):  # noqa: ANN001, ANN201 - pluggy hook
    register(AllLinearTargets)
