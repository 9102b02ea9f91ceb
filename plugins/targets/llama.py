"""The built-in ``llama`` target detector: Llama-layout projection names."""

from __future__ import annotations

from typing import Any, Literal

from lorapipe.plugin import Options, TargetDetector, TargetSelection, hookimpl

ATTENTION = ["q_proj", "k_proj", "v_proj", "o_proj"]
MLP = ["gate_proj", "up_proj", "down_proj"]
PRESETS = {"attention": ATTENTION, "mlp": MLP, "all": ATTENTION + MLP}


class LlamaTargetOptions(Options):
    preset: Literal["all", "attention", "mlp"] = "all"


class LlamaTargets(TargetDetector):
    """Llama-layout models (Llama, Mistral, Qwen2, ...): q/k/v/o and gate/up/down projections."""

    name = "llama"
    priority = 10
    Options = LlamaTargetOptions

    def detect(self, model: Any) -> TargetSelection | None:
        """Recognised by its linear layers' names, not ``model_type``: Mistral, Qwen2 and
        many fine-tuned derivatives share the layout under other type names. A model with
        more (linear attention, per-layer projections, experts) is not Llama-layout: the
        preset would silently leave those out."""
        from lorapipe.plugin import adaptable_modules, expert_parameters

        present = {name.rsplit(".", 1)[-1] for name in adaptable_modules(model)}
        if present != set(PRESETS["all"]) or expert_parameters(model):
            return None
        preset = self.options.preset
        return TargetSelection(
            modules=list(PRESETS[preset]),
            reason=f"Llama-layout projections found; preset '{preset}'",
        )


@hookimpl
def lorapipe_register_target_detectors(register):  # noqa: ANN001, ANN201 - pluggy hook
    register(LlamaTargets)
