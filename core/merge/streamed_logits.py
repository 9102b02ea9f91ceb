"""Logits of a model larger than memory, one module's weights at a time: base + adapter
(peft, unmerged) and merged/ compared the way a model that fits is.

accelerate's disk offload streams a plain model, but peft cannot attach an adapter to an
offloaded one (dispatch fails with "Cannot copy out of meta tensor"). Here the model,
adapter included, is built on the meta device, and each module that holds weights gets
two hooks: read its tensors from the safetensors files just before it runs, put them
back on meta just after. A LoRA layer is one such unit with its base layer, A, B and
DoRA magnitude, because its forward reads the base weight directly. Memory holds one
unit's weights and the activations of a few short samples; the model's own forward runs,
so every architecture transformers builds is covered.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch
from accelerate.utils import set_module_tensor_to_device
from peft.tuners.tuners_utils import BaseTunerLayer
from safetensors import safe_open

from lorapipe.merge.streaming import Layout

Source = Callable[[str], torch.Tensor]  # a parameter's name in the model → its tensor
_PEFT_PREFIX = "base_model.model."


class Checkpoint:
    """A safetensors checkpoint's tensors by key, each read when asked for."""

    def __init__(self, model_dir: Path) -> None:
        layout = Layout.of(model_dir)
        self.files: dict[str, Path] = {}
        for shard in layout.shards:
            with safe_open(str(model_dir / shard), framework="pt") as handle:
                self.files.update(dict.fromkeys(handle.keys(), model_dir / shard))  # noqa: SIM118

    def __contains__(self, key: str) -> bool:
        return key in self.files

    def __getitem__(self, key: str) -> torch.Tensor:
        with safe_open(str(self.files[key]), framework="pt") as handle:
            return handle.get_tensor(key)


def model_source(model: torch.nn.Module, checkpoint: Checkpoint) -> Source:
    """A plain model's parameters from its checkpoint; a tied weight the checkpoint does
    not store (the output head) from the one it is tied to."""
    tied = getattr(model, "all_tied_weights_keys", None) or {}

    def get(name: str) -> torch.Tensor:
        return checkpoint[name if name in checkpoint else tied[name]]

    return get


def adapter_source(model: torch.nn.Module, base: Checkpoint,
                   adapter: dict[str, torch.Tensor]) -> Source:
    """A PeftModel's parameters: the adapter's from its file (saved without the adapter
    name), the rest from the base checkpoint (without peft's prefixes)."""
    base_get = model_source(model.get_base_model(), base)

    def get(name: str) -> torch.Tensor:
        for saved in (name.replace(".default", ""),  # lora_A.weight, lora_embedding_A
                      name.replace(".modules_to_save.default", ""),
                      name.replace(".default.weight", "")):  # DoRA's lora_magnitude_vector
            if saved in adapter:
                return adapter[saved]
        key = name.removeprefix(_PEFT_PREFIX).replace(".base_layer", "")
        return base_get(key.replace(".original_module", ""))

    return get


def materialize_buffers(model: torch.nn.Module) -> None:
    """Compute the buffers a checkpoint does not store (rotary frequencies, embedding
    scales) on the CPU, as ``from_pretrained`` does for a model built on meta."""
    for key, buffer in model.named_non_persistent_buffers():
        set_module_tensor_to_device(model, key, "cpu", value=torch.empty_like(buffer,
                                                                              device="cpu"))
    model.initialize_weights()  # sets exactly those buffers: the weights are still meta


def streamed_logits(model: torch.nn.Module, source: Source, samples: list[list[int]],
                    dtype: torch.dtype) -> list[torch.Tensor]:
    """fp32 logits of each sample, ``model``'s weights (on meta) read from ``source``
    module by module; floating weights in ``dtype`` except LoRA's own (peft keeps those
    in their saved precision)."""
    handles = []
    for prefix, unit in _units(model):
        handles.append(unit.register_forward_pre_hook(_loader(prefix, unit, source, dtype)))
        handles.append(unit.register_forward_hook(_dropper(unit)))
    try:
        with torch.no_grad():
            return [model(input_ids=torch.tensor([ids])).logits[0].float() for ids in samples]
    finally:
        for handle in handles:
            handle.remove()


def _units(model: torch.nn.Module) -> list[tuple[str, torch.nn.Module]]:
    """The modules whose weights are loaded together: LoRA layers whole, and every other
    module holding parameters of its own outside them."""
    units, inside = [], ()
    for name, module in model.named_modules():
        if inside and name.startswith(inside):
            continue
        if isinstance(module, BaseTunerLayer):
            units.append((name, module))
            inside = name + "."
        elif any(True for _ in module.parameters(recurse=False)):
            units.append((name, module))
    return units


def _loader(prefix: str, unit: torch.nn.Module, source: Source,
            dtype: torch.dtype) -> Callable[..., None]:
    def load(*_: object) -> None:
        for name in [name for name, _ in unit.named_parameters()]:
            value = source(f"{prefix}.{name}" if prefix else name)
            if value.is_floating_point() and "lora_" not in name:
                value = value.to(dtype)
            set_module_tensor_to_device(unit, name, "cpu", value=value, dtype=value.dtype)
    return load


def _dropper(unit: torch.nn.Module) -> Callable[..., None]:
    def drop(*_: object) -> None:
        for name in [name for name, _ in unit.named_parameters()]:
            set_module_tensor_to_device(unit, name, "meta")
    return drop
