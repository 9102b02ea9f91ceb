"""LoRA on fused expert stacks (peft's ParamWrapper) in the streaming merge: where peft
put each stack's adapter, and each expert's update in the checkpoint's own layout."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch

if TYPE_CHECKING:
    from lorapipe.merge.streaming import Architecture, LoraAdapter, _Update


@dataclass(frozen=True)
class Stacked:
    """A fused expert parameter peft adapted: the module its LoRA is saved under (peft
    nests one ParamWrapper per parameter), whether it holds (experts, out, in), and the
    checkpoint tensors it is loaded from (transformers fuses per-expert checkpoint
    weights, ``experts.0.gate_proj.weight`` …, into one stack at load)."""

    module: str
    out_in: bool
    parts: tuple[str, ...]



def stacked_parameters(model: torch.nn.Module, lora: Any) -> dict[str, Stacked]:
    """peft's own injection, run on the weightless model, says which nested wrapper holds
    the LoRA of which parameter (the nesting follows peft's matching order)."""
    from peft import inject_adapter_in_model
    from peft.tuners.lora import ParamWrapper
    from transformers.core_model_loading import revert_weight_conversion

    shapes = {name: param.shape for name, param in model.named_parameters()}
    inject_adapter_in_model(lora, model, low_cpu_mem_usage=True)
    stacked = {}
    for name, module in model.named_modules():
        if isinstance(module, ParamWrapper):
            key = f"{name.replace('.base_layer', '')}.{module.parameter_name}"
            parts = revert_weight_conversion(
                model, {key: torch.empty(shapes[key], device="meta")})
            stacked[key] = Stacked(name, module._did_swap_in_out_features, tuple(parts))
    return stacked


class StackedDeltas:
    """Each adapted expert stack's update, converted to the checkpoint tensors it is
    stored in when the first of them is read and kept until the last is."""

    def __init__(self, architecture: Architecture, adapter: LoraAdapter) -> None:
        self.architecture, self.adapter = architecture, adapter
        self.of_part = {part: key for key, stacked in architecture.stacked.items()
                        if stacked.module in adapter.updates for part in stacked.parts}
        self.pending: dict[str, dict[str, torch.Tensor]] = {}

    def pop(self, part: str) -> tuple[str, torch.Tensor] | None:
        """The LoRA module and the delta of checkpoint tensor ``part``, if it has one."""
        key = self.of_part.get(part)
        if key is None:
            return None
        stacked = self.architecture.stacked[key]
        if key not in self.pending:
            delta = _stacked_delta(self.adapter.updates[stacked.module], stacked.out_in)
            self.pending[key] = self.architecture.checkpoint_parts({key: delta})
        deltas = self.pending[key]
        delta = deltas.pop(part)
        if not deltas:
            del self.pending[key]
        return stacked.module, delta


def _stacked_delta(update: _Update, out_in: bool) -> torch.Tensor:
    """``s·B_e·A_e`` for every expert, in the parameter's layout (float32). peft's
    ParamWrapper stores A's rows expert by expert and B's columns interleaved."""
    experts, rank_in = update.experts, update.a.shape[1]
    a = update.a.float().reshape(experts, -1, rank_in)  # (E, r, in)
    b = update.b.float().reshape(update.b.shape[0], -1, experts).permute(2, 0, 1)  # (E, out, r)
    delta = torch.bmm(b, a) * update.scale  # (E, out, in)
    return delta if out_in else delta.transpose(1, 2)
