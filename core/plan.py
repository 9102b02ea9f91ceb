"""The run plan: every configured component looked up, checked and built, once.

``lorapipe validate`` and every stage start here. Each component reference in the config
(``{name: jsonl, path: ...}``) is resolved in the registry, its remaining keys validated
against that plugin's ``Options``, and the class instantiated with them and its YAML
field. Stages receive these objects through the run context and never look a name up;
a wrong name or option fails here, in seconds, naming the field.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar, cast, get_args

import yaml
from pydantic import BaseModel, ValidationError

from lorapipe.component import Component, Part
from lorapipe.components import (
    ChatTemplate,
    Evaluator,
    Exporter,
    Loader,
    Quantizer,
    TargetDetector,
)
from lorapipe.config import ComponentRef, PipelineConfig, TrainConfig, config_error, load_config
from lorapipe.errors import ConfigError
from lorapipe.objective import Objective, records_for
from lorapipe.registry import Registry, get_registry

C = TypeVar("C", bound=Component)


@dataclass(frozen=True)
class RunPlan:
    """A validated config and the components it names, ready to use."""

    config: PipelineConfig
    loader: Loader
    validation_loader: Loader | None
    test_loader: Loader | None
    template: ChatTemplate
    quantizer: Quantizer
    # adapter.target_detector when set; else every detector that works with its default
    # options, in the order they are asked (ascending priority). Unused with target_modules.
    detectors: tuple[TargetDetector, ...]
    detector_named: bool
    objective: Objective
    evaluators: tuple[Evaluator, ...]
    exporters: tuple[Exporter, ...]
    registry: Registry

    def configured(self) -> Iterator[Component]:
        """Every component the config names, in config order (auto detectors excluded)."""
        yield self.quantizer
        if self.detector_named:
            yield from self.detectors
        yield from self.loaders()
        yield self.template
        yield self.objective
        yield from self.evaluators
        yield from self.exporters

    def loaders(self) -> Iterator[Loader]:
        """The data sources: training, then the separate validation and test ones if any."""
        yield self.loader
        for extra in (self.validation_loader, self.test_loader):
            if extra is not None:
                yield extra

    def resolved_dict(self) -> dict[str, Any]:
        """The config with every default and every plugin option filled in."""
        data = self.config.model_dump(mode="json")
        for component in self.configured():
            _set_path(data, component.field.split("."),
                      {"name": component.name, **component.options.model_dump(mode="json")})
        return data

    def resolved_yaml(self) -> str:
        """``resolved_dict`` as YAML, for ``config.resolved.yaml``."""
        return yaml.safe_dump(self.resolved_dict(), sort_keys=False)

    def config_hash(self) -> str:
        """Stable hash of the resolved config, recorded in run.json and checkpoints."""
        blob = json.dumps(self.resolved_dict(), sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()[:16]


def build_component(registry: Registry, kind: str, field: str, ref: ComponentRef,
                    base: type[C]) -> C:
    """The component ``ref`` names, its options validated; errors name ``field``."""
    cls = registry.get(kind, ref.name, f"{field}.name")
    try:
        options = cls.Options.model_validate(ref.raw_options)
    except ValidationError as err:
        raise config_error(err, cls.Options, prefix=field,
                           owner=f"{kind.replace('_', ' ')} '{ref.name}'") from None
    parts = {path: build_component(registry, part.kind, f"{field}.{path}", ref, part)
             for path, ref, part in _part_refs(options, "")}
    # The registry only holds subclasses of the kind's base (registry.py).
    return cast(C, cls(options, field=field, parts=parts))


def _part_refs(value: Any, path: str, annotation: Any = None,
               ) -> Iterator[tuple[str, ComponentRef, type[Component]]]:
    """Every ``Part[...]`` option set in ``value`` (a component's options, walked through
    nested models, dicts and lists): its dotted path, reference and component base."""
    if isinstance(value, ComponentRef):
        base = _part_base(annotation)
        if base is not None:
            yield path, value, base
    elif isinstance(value, BaseModel):
        for name, info in type(value).model_fields.items():
            yield from _part_refs(getattr(value, name), f"{path}.{name}".lstrip("."),
                                  (info.annotation, *info.metadata))
    elif isinstance(value, dict):
        for key, item in value.items():
            yield from _part_refs(item, f"{path}.{key}", annotation)
    elif isinstance(value, list | tuple):
        for index, item in enumerate(value):
            yield from _part_refs(item, f"{path}.{index}", annotation)


def _part_base(annotation: Any) -> type[Component] | None:
    """The component base a ``Part`` marker in ``annotation`` (at any depth) names."""
    if isinstance(annotation, Part):
        return annotation.base
    for inner in (*getattr(annotation, "__metadata__", ()), *get_args(annotation),
                  *(annotation if isinstance(annotation, tuple) else ())):
        found = _part_base(inner)
        if found is not None:
            return found
    return None


def build_plan(config: PipelineConfig, registry: Registry | None = None) -> RunPlan:
    """Resolve and instantiate every component ``config`` names."""
    registry = registry if registry is not None else get_registry()
    data, adapter = config.data, config.adapter

    def build(kind: str, field: str, ref: ComponentRef, base: type[C]) -> C:
        return build_component(registry, kind, field, ref, base)

    if adapter.target_detector is not None:
        detectors: tuple[TargetDetector, ...] = (build(
            "target_detector", "adapter.target_detector", adapter.target_detector,
            TargetDetector),)
    else:
        # asked in ascending priority; one with required options only when named
        detectors = tuple(sorted(
            cast(list[TargetDetector],
                 registry.with_defaults("target_detector", "adapter.target_detector")),
            key=lambda d: (d.priority, d.name)))
    _check_context(config)
    objective = build_objective(config.train, registry)
    evaluators = tuple(build("evaluator", f"evaluate.evaluators.{i}", ref, Evaluator)
                       for i, ref in enumerate(config.evaluate.evaluators))
    _check_evaluated_records(objective, evaluators)
    validation = data.validation.loader
    test = data.test.loader if data.test is not None else None
    return RunPlan(
        config=config,
        loader=build("loader", "data.loader", data.loader, Loader),
        validation_loader=(build("loader", "data.validation.loader", validation, Loader)
                           if validation is not None else None),
        test_loader=build("loader", "data.test.loader", test, Loader) if test else None,
        template=build("chat_template", "data.template", data.template, ChatTemplate),
        quantizer=build("quantizer", "model.quantizer", config.model.quantizer, Quantizer),
        detectors=detectors,
        detector_named=adapter.target_detector is not None,
        objective=objective,
        evaluators=evaluators,
        exporters=tuple(build("exporter", f"export.exporters.{i}", ref, Exporter)
                        for i, ref in enumerate(config.export.exporters)),
        registry=registry,
    )


def build_objective(train: TrainConfig, registry: Registry | None = None) -> Objective:
    """``train.objective``'s component: the plan's, and the loop's when its caller (a script,
    a test) gives it none."""
    registry = registry if registry is not None else get_registry()
    return build_component(registry, "objective", "train.objective", train.objective, Objective)


def _check_evaluated_records(objective: Objective, evaluators: tuple[Evaluator, ...]) -> None:
    """An evaluator of one record kind cannot score a run whose objective trains only on
    another (``preference`` pairs under ``kto``'s unpaired data): say so before training,
    not at the evaluate stage after it."""
    trained = records_for(objective.columns)
    for evaluator in evaluators:
        if evaluator.records is not None and trained not in (None, evaluator.records):
            raise ConfigError(evaluator.field, (
                f"evaluator '{evaluator.name}' scores {evaluator.records} records, but "
                f"train.objective '{objective.name}' trains on {trained} records only, so "
                "the held-out data holds none; remove it (perplexity scores any data)"))


def _check_context(config: PipelineConfig) -> None:
    """``data.max_length`` must fit the model: longer samples would run past the positions
    it was trained on (or fail outright) hours into training."""
    from lorapipe.model.source import model_context

    context = model_context(config.model.name_or_path)
    if context is not None and config.data.max_length > context:
        raise ConfigError("data.max_length", f"{config.data.max_length} is longer than the "
                          f"model's context of {context} tokens (its config.json); lower it "
                          f"to at most {context}")



def load_plan(path: str | Path, overrides: list[str] | None = None,
              registry: Registry | None = None) -> RunPlan:
    """Read, override and validate a pipeline config, and build its plan."""
    return build_plan(load_config(path, overrides), registry)


def _set_path(data: Any, keys: list[str], value: Any) -> None:
    for key in keys[:-1]:
        data = data[int(key)] if isinstance(data, list) else data[key]
    last = keys[-1]
    if isinstance(data, list):
        data[int(last)] = value
    else:
        data[last] = value
