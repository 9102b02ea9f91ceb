"""Which modules get LoRA adapters: asked of the detector plugins, or checked when given.

Detectors answer with short module names (``q_proj``), which peft matches as suffixes of
the full dotted names; explicit ``adapter.target_modules`` use the same rule, so a name
is checked here exactly as peft will apply it. Mixture-of-experts models (transformers 5)
store their experts as fused 3-D parameters, not linear layers: those are named the same
way (``experts.gate_up_proj``) and adapted through peft's ``target_parameters``.
Routers are never chosen unless named, and the report lists what was left out and why.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

from torch import nn
from transformers import PreTrainedModel
from transformers.pytorch_utils import Conv1D

from lorapipe.components import TargetSelection
from lorapipe.config import AdapterConfig
from lorapipe.errors import ConfigError
from lorapipe.model.setup import ModelSetup

# bitsandbytes' Linear4bit and Linear8bitLt subclass nn.Linear, so they are covered too.
LINEAR_TYPES: tuple[type[nn.Module], ...] = (nn.Linear, Conv1D)
# Everything else peft's LoRA can wrap, accepted when a user names it explicitly.
OTHER_LORA_TYPES: tuple[type[nn.Module], ...] = (nn.Embedding, nn.Conv1d, nn.Conv2d)


# Linear layers named so inside a mixture-of-experts block are routers (or, for a shared
# expert, its gate): they decide where tokens go rather than transform them.
_ROUTER_LEAVES = ("router", "gate", "shared_expert_gate")


@dataclass(frozen=True)
class ChosenTargets:
    modules: list[str]
    detector: str | None  # None: given in adapter.target_modules / target_parameters
    reason: str
    parameters: list[str] = field(default_factory=list)  # fused experts (target_parameters)
    withheld: dict[str, str] = field(default_factory=dict)  # module name → why not adapted

    def as_dict(self) -> dict[str, object]:
        return {"modules": self.modules, "parameters": self.parameters,
                "detector": self.detector, "reason": self.reason}


def vocabulary_layers(model: nn.Module) -> dict[str, nn.Module]:
    """The input embeddings and the output head, by full name."""
    if not isinstance(model, PreTrainedModel):
        return {}
    ids = {id(m) for m in (model.get_output_embeddings(), model.get_input_embeddings())
           if m is not None}
    return {name: module for name, module in model.named_modules() if id(module) in ids}


def router_modules(model: nn.Module) -> dict[str, nn.Module]:
    """Routers of mixture-of-experts blocks (and every module inside them), by full name:
    modules whose class is a router (``Qwen3MoeTopKRouter``), and linear layers named
    ``router``/``gate``/``shared_expert_gate`` beside an ``experts`` module."""
    modules = dict(model.named_modules())
    found: dict[str, nn.Module] = {}
    for name, module in modules.items():
        parent, _, leaf = name.rpartition(".")
        beside_experts = f"{parent}.experts" if parent else "experts"
        if (type(module).__name__.lower().endswith("router")
                or (isinstance(module, LINEAR_TYPES) and leaf in _ROUTER_LEAVES
                    and beside_experts in modules)):
            found.update({sub: m for sub, m in modules.items()
                          if sub == name or sub.startswith(name + ".")})
    return found


def adaptable_modules(model: nn.Module) -> dict[str, nn.Module]:
    """Every linear layer (plain, bitsandbytes 4/8-bit, GPT-2 Conv1D) by full name, except
    the output head and the embeddings (adapting those changes the vocabulary projection,
    which is what ``modules_to_save`` is for) and routers."""
    excluded = {id(m) for m in (*vocabulary_layers(model).values(),
                                *router_modules(model).values())}
    return {name: module for name, module in model.named_modules()
            if isinstance(module, LINEAR_TYPES) and id(module) not in excluded}


def expert_parameters(model: nn.Module) -> dict[str, nn.Parameter]:
    """Fused expert weights by full name: the 3-D parameters (experts × in × out, or
    experts × out × in) of modules that are not convolutions. A 4/8-bit base keeps them
    in its compute dtype: bitsandbytes quantizes linear layers only."""
    return {f"{name}.{key}": param for name, module in model.named_modules()
            if not isinstance(module, OTHER_LORA_TYPES)
            for key, param in module.named_parameters(recurse=False) if param.dim() == 3}


def short_parameter_names(model: nn.Module, chosen: dict[str, nn.Parameter]) -> list[str]:
    """``module.parameter`` for each chosen parameter (``experts.gate_up_proj``), in model
    order; kept in full where the short form would also match one not chosen."""
    others = [name for name, p in model.named_parameters() if p.dim() >= 2 and name not in chosen]
    names: list[str] = []
    for name in chosen:
        short = ".".join(name.split(".")[-2:])
        key = name if any(matches_target(other, short) for other in others) else short
        if key not in names:
            names.append(key)
    return names


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
    if adapter.target_modules is not None or adapter.target_parameters is not None:
        modules, parameters = adapter.target_modules or [], adapter.target_parameters or []
        check_names(model, modules)
        check_parameter_names(model, parameters)
        check_modules_to_save(model, adapter.modules_to_save)
        chosen = ChosenTargets(list(modules), None, "adapter.target_modules", list(parameters))
        chosen = as_peft_reads(model, chosen)
        if chosen.withheld:
            raise ConfigError(
                "adapter.target_modules",
                f"peft would read {', '.join(chosen.withheld)} as this {_kind(model)} model's "
                "experts (its transformers-4 names) and adapt the fused stacks instead; name "
                "the experts in adapter.target_parameters (candidates: "
                f"{', '.join(short_parameter_names(model, expert_parameters(model)))})",
            )
        return _checked(chosen, adapter)
    for detector in detectors:
        selection = detector.detect(model)
        if selection is not None:
            check_modules_to_save(model, adapter.modules_to_save)
            return _checked(_chosen(model, detector.name, selection), adapter)
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
    if not selection.modules and not selection.parameters:
        raise ConfigError("adapter.target_detector", f"detector '{detector}' chose no modules")
    check_names(model, selection.modules, field="adapter.target_detector")
    check_parameter_names(model, selection.parameters, field="adapter.target_detector")
    chosen = ChosenTargets(list(selection.modules), detector, selection.reason,
                           list(selection.parameters))
    return as_peft_reads(model, chosen)


def as_peft_reads(model: nn.Module, chosen: ChosenTargets) -> ChosenTargets:
    """``chosen`` in names peft adapts as they are, at injection and at every load.

    For adapters of transformers 4, peft rewrites ``gate_proj``/``up_proj``/``down_proj``
    (``w1``/``w2``/``w3``, ``gate``) of Qwen2-MoE- and Mixtral-style model types into
    the fused experts. Depending on its version it drops the linear layers of that name
    (DeepSeek-V3's dense layers and shared experts), or keeps them but also adapts the
    routed experts (even with ``experts: false``) at twice the rank. A name it would
    rewrite is qualified by its parent (``mlp.gate_proj``, ``shared_experts.gate_proj``),
    which matches the same layers and nothing peft rewrites; a name that stays rewritten
    even so is withheld, with the reason.
    """
    if not _peft_rewrites(model, chosen.modules):
        return chosen
    modules: list[str] = []
    withheld: dict[str, str] = {}
    for name in chosen.modules:
        qualified = [name] if not _peft_rewrites(model, [name]) else _parent_qualified(model, name)
        if qualified and not _peft_rewrites(model, qualified):
            modules.extend(q for q in qualified if q not in modules)
        else:
            withheld[name] = ("peft reads this name as the experts of "
                              f"{_kind(model)} models (transformers 4 named them so) and would "
                              "adapt those instead, also when loading the adapter")
    return replace(chosen, modules=modules, withheld=withheld)


def _peft_rewrites(model: nn.Module, modules: list[str]) -> bool:
    """Whether peft's transformers-4 conversion changes these target modules: asked of
    peft itself, whose rule differs between its versions."""
    from peft import LoraConfig
    from peft.utils.transformers_weight_conversion import convert_peft_config_for_transformers

    if not modules or not hasattr(getattr(model, "config", None), "model_type"):
        return False
    config = LoraConfig(target_modules=list(modules))
    try:
        convert_peft_config_for_transformers(config, model=model, conversions=None)
    except ValueError:  # half of a fused pair (gate_proj without up_proj)
        return True
    return (set(config.target_modules or ()) != set(modules)
            or bool(config.target_parameters) or bool(config.rank_pattern))


def _parent_qualified(model: nn.Module, name: str) -> list[str]:
    """``parent.leaf`` for each layer ``name`` matches, in model order."""
    qualified: list[str] = []
    for full, _ in model.named_modules():
        if matches_target(full, name):
            key = ".".join(full.split(".")[-2:])
            if key not in qualified:
                qualified.append(key)
    return qualified


# What peft's ParamWrapper (the LoRA of a bare parameter) refuses, as config fields.
_PARAMETER_LORA_LIMITS = (("use_dora", "DoRA"), ("init", "PiSSA/OLoRA initialisation"))


def _checked(targets: ChosenTargets, adapter: AdapterConfig) -> ChosenTargets:
    """Refuse adapter options peft cannot apply to fused expert parameters."""
    if not targets.parameters:
        return targets
    for field_name, what in _PARAMETER_LORA_LIMITS:
        value = getattr(adapter, field_name)
        if value and value not in ("default", "gaussian"):
            raise ConfigError(
                f"adapter.{field_name}",
                f"{what} cannot be applied to fused expert weights "
                f"({', '.join(targets.parameters)}): peft adapts them as bare parameters. "
                "Remove it, or leave the experts out with adapter.target_detector: "
                "{name: all_linear, experts: false}",
            )
    return targets


def check_parameter_names(model: nn.Module, names: list[str],
                          field: str = "adapter.target_parameters") -> None:
    """Every name must match (peft's suffix rule) a 2-D or 3-D parameter of the model."""
    candidates = [name for name, p in model.named_parameters() if p.dim() in (2, 3)]
    for key in names:
        if not any(matches_target(name, key) for name in candidates):
            experts = short_parameter_names(model, expert_parameters(model))
            raise ConfigError(
                field,
                f"'{key}' matches no weight of this {_kind(model)} model. Fused expert "
                f"weights: {', '.join(experts) or 'none'}",
            )


def not_adapted(model: nn.Module, targets: ChosenTargets) -> list[dict[str, Any]]:
    """The layers with weights that get no adapter, grouped by name, each with why: the
    report says plainly what a run did not fine-tune."""
    how = (f"detector '{targets.detector}'" if targets.detector
           else "adapter.target_modules / target_parameters")
    vocabulary, routers = vocabulary_layers(model), router_modules(model)
    groups: dict[tuple[str, str], dict[str, Any]] = {}

    def add(name: str, count: int, reason: str) -> None:
        leaf = ".".join(name.split(".")[-2:]) if reason.startswith("fused") else \
            name.rsplit(".", 1)[-1]
        entry = groups.setdefault((leaf, reason), {"name": leaf, "layers": 0, "parameters": 0,
                                                   "reason": reason})
        entry["layers"] += 1
        entry["parameters"] += count

    for name, module in model.named_modules():
        if any(matches_target(name, key) for key in targets.modules):
            continue
        own = sum(p.numel() for p in module.parameters(recurse=False))
        if name in vocabulary:
            add(name, own, "vocabulary: input embeddings and output head; list them in "
                "adapter.modules_to_save to train them in full")
        elif name in routers:
            if own:
                add(name, own, "router: left frozen so tokens keep their experts; name it in "
                    "adapter.target_modules (linear) or target_parameters to adapt it")
        elif isinstance(module, LINEAR_TYPES):
            withheld = next((why for key, why in targets.withheld.items()
                             if matches_target(name, key)), None)
            add(name, own, withheld or f"linear layer not chosen by {how}")
        elif isinstance(module, nn.Embedding):
            add(name, own, "embedding table: list it in adapter.modules_to_save to train it "
                "in full")
        elif isinstance(module, OTHER_LORA_TYPES):
            add(name, own, f"{type(module).__name__} (Mamba, linear-attention or short "
                "convolution state; few weights): not chosen; name it in "
                "adapter.target_modules to adapt it")
    for name, param in expert_parameters(model).items():
        if not any(matches_target(name, key) for key in targets.parameters):
            add(name, param.numel(), f"fused expert weights not chosen by {how}")
    return list(groups.values())


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
