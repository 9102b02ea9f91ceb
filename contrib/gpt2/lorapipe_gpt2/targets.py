"""The ``gpt2`` target detector: GPT-2's fused ``c_attn``, ``c_proj`` and ``c_fc`` layers.

GPT-2 names both its attention output and its MLP output ``c_proj``; the presets that
want only one of them use the parent's name too (``attn.c_proj``), which peft matches as
a suffix. GPT-2 stores these layers as ``Conv1D`` (weight ``(in, out)``); lorapipe sees
that every selected layer is one and sets peft's ``fan_in_fan_out``. GPT-2 derivatives
that use ``nn.Linear`` under the same names (GPT-BigCode) get it off.
"""

from __future__ import annotations

from typing import Any, Literal

from transformers.pytorch_utils import Conv1D

from lorapipe.plugin import Options, TargetDetector, TargetSelection

PRESETS = {
    "all": ["c_attn", "c_proj", "c_fc"],
    "attention": ["c_attn", "attn.c_proj"],
    "mlp": ["c_fc", "mlp.c_proj"],
}


class Gpt2TargetOptions(Options):
    preset: Literal["all", "attention", "mlp"] = "all"


class Gpt2Targets(TargetDetector):
    """GPT-2 family: fused c_attn, c_proj and c_fc (Conv1D, so fan_in_fan_out)."""

    name = "gpt2"
    priority = 10
    Options = Gpt2TargetOptions

    def detect(self, model: Any) -> TargetSelection | None:
        from lorapipe.plugin import adaptable_modules

        layers = {
            name: module for name, module in adaptable_modules(model).items()
            if name.rsplit(".", 1)[-1] in PRESETS["all"]
        }
        present = {name.rsplit(".", 1)[-1] for name in layers}
        if present != set(PRESETS["all"]):
            return None
        preset = self.options.preset
        conv1d = [isinstance(m, Conv1D) for m in layers.values()]
        if any(conv1d) and not all(conv1d):
            return None  # a mix would need per-layer settings; let another detector answer
        return TargetSelection(
            modules=list(PRESETS[preset]),
            reason=f"GPT-2-layout layers ({'Conv1D' if all(conv1d) else 'Linear'}) found; "
            f"preset '{preset}'",
        )
