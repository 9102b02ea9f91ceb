"""Which modules get LoRA adapters: asked of the detector plugins, or checked when given.

Detectors answer with short module names (``q_proj``), which peft matches as suffixes of
the full dotted names; explicit ``adapter.target_modules`` use the same rule, so a name
is checked here exactly as peft will apply it.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn
from transformers import PreTrainedModel
from transformers.pytorch_utils import Conv1D

from lorapipe.components import TargetSelection
from lorapipe.errors import ConfigError
from lorapipe.model.setup import ModelSetup

# bitsandbytes' Linear4bit and Linear8bitLt subclass nn.Linear, so they are covered too.
LINEAR_TYPES: tuple[type[nn.Module], ...] = (nn.Linear, Conv1D)
# Everything else peft's LoRA can wrap, accepted when a user names it explicitly.
OTHER_LORA_TYPES: tuple[type[nn.Module], ...] = (nn.Embedding, nn.Conv1d, nn.Conv2d)


@dataclass(frozen=True)
class ChosenTargets:
    modules: list[str]
    detector: str | None  # None: given in adapter.target_modules
    reason: str

    def as_dict(self) -> dict[str, object]:
        return {"modules": self.modules, "detector": self.detector, "reason": self.reason}


def adaptable_modules(model: nn.Module) -> dict[str, nn.Module]:
    """Every linear layer (plain, bitsandbytes 4/8-bit, GPT-2 Conv1D) by full name, except
    the output head and the embeddings: adapting those changes the vocabulary projection,
    which is what ``modules_to_save`` is for."""
    excluded = set()
    if isinstance(model, PreTrainedModel):
        excluded = {id(m) for m in (model.get_output_embeddings(), model.get_input_embeddings())
                    if m is not None}
    return {name: module for name, module in model.named_modules()
            if isinstance(module, LINEAR_TYPES) and id(module) not in excluded}


def short_names(model: nn.Module, chosen: dict[str, nn.Module]) -> list[str]:
    """The last name component of each chosen module, in model order; a short name that
    would also match a module not chosen (peft matches suffixes) is kept in full instead."""
    names: list[str] = []
    all_names = [name for name, _ in model.named_modules()]
    for name in chosen:
        leaf = name.rsplit(".", 1)[-1]
        clashes = any(matches_target(other, leaf) and other not in chosen for other in all_names)
        key = name if clashes else leaf
        if key not in names:
            names.append(key)
    return names


def matches_target(module_name: str, key: str) -> bool:
    """peft's rule for a target name given as a string in a list."""
    return module_name == key or module_name.endswith("." + key)


def select_targets(model: nn.Module, setup: ModelSetup) -> ChosenTargets:
    """The adapter targets for ``model``: checked explicit names, the named detector, or
    the first detector (lowest ``priority``) that recognises the model.

    Called once per run, on the weightless model when it can be built, so the memory
    estimate and the injection use the same decision.
    """
    adapter, detectors = setup.config.adapter, setup.detectors
    if adapter.target_modules is not None:
        check_names(model, adapter.target_modules)
        check_modules_to_save(model, adapter.modules_to_save)
        return ChosenTargets(list(adapter.target_modules), None, "adapter.target_modules")
    for detector in detectors:
        selection = detector.detect(model)
        if selection is not None:
            check_modules_to_save(model, adapter.modules_to_save)
            return _chosen(model, detector.name, selection)
    if setup.detector_named:
        raise detectors[0].config_error(
            f"detector '{detectors[0].name}' does not recognise this {_kind(model)} "
            "model; remove adapter.target_detector to try every detector, or list "
            f"adapter.target_modules (candidates: {', '.join(candidate_names(model))})"
        )
    raise ConfigError(
        "adapter.target_modules",
        f"no target detector recognises this {_kind(model)} model (tried: "
        f"{', '.join(d.name for d in detectors) or 'none'}); list the modules to adapt, "
        f"candidates: {', '.join(candidate_names(model))}",
    )


def _chosen(model: nn.Module, detector: str, selection: TargetSelection) -> ChosenTargets:
    if not selection.modules:
        raise ConfigError("adapter.target_detector", f"detector '{detector}' chose no modules")
    check_names(model, selection.modules, field="adapter.target_detector")
    return ChosenTargets(list(selection.modules), detector, selection.reason)


def targets_are_transposed(model: nn.Module, names: list[str]) -> bool:
    """True when every targeted layer is a ``Conv1D``, whose weight is stored (in, out)."""
    matched = [
        module for name, module in model.named_modules()
        if isinstance(module, LINEAR_TYPES + OTHER_LORA_TYPES)
        and any(matches_target(name, key) for key in names)
    ]
    return bool(matched) and all(isinstance(module, Conv1D) for module in matched)


def candidate_names(model: nn.Module) -> list[str]:
    """Short names of every module peft can put an adapter on (head included)."""
    names: list[str] = []
    for name, module in model.named_modules():
        if isinstance(module, LINEAR_TYPES + OTHER_LORA_TYPES):
            leaf = name.rsplit(".", 1)[-1]
            if leaf not in names:
                names.append(leaf)
    return names


def check_names(model: nn.Module, names: list[str], field: str = "adapter.target_modules") -> None:
    """Every name must match at least one module peft can adapt."""
    wrappable = [name for name, module in model.named_modules()
                 if isinstance(module, LINEAR_TYPES + OTHER_LORA_TYPES)]
    for key in names:
        if not any(matches_target(name, key) for name in wrappable):
            raise ConfigError(
                field,
                f"'{key}' matches no adaptable layer of this {_kind(model)} model. "
                f"Candidates: {', '.join(candidate_names(model))}",
            )


def check_modules_to_save(model: nn.Module, names: list[str]) -> None:
    """``adapter.modules_to_save`` names are matched by suffix too; each must exist."""
    all_names = [name for name, module in model.named_modules()
                 if any(True for _ in module.parameters(recurse=False))]
    for key in names:
        if not any(matches_target(name, key) for name in all_names):
            leaves = dict.fromkeys(name.rsplit(".", 1)[-1] for name in all_names)
            raise ConfigError(
                "adapter.modules_to_save",
                f"'{key}' matches no module with weights in this {_kind(model)} model. "
                f"Candidates: {', '.join(leaves)}",
            )


def _kind(model: nn.Module) -> str:
    config = getattr(model, "config", None)
    return getattr(config, "model_type", None) or type(model).__name__
