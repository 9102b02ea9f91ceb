"""What every component kind derives from: a name users pick in YAML, validated
``Options``, the YAML field it was configured at, and the ``Part`` options that name other
components. The kinds themselves are in ``components.py``."""

from __future__ import annotations

from abc import ABC
from typing import Annotated, Any, ClassVar

from pydantic import BaseModel, ConfigDict

from lorapipe.config.schema import ComponentRef
from lorapipe.errors import ConfigError


class Options(BaseModel):
    """Base of every component's options: unknown keys are errors, not silently ignored,
    and so are infinite and NaN numbers."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)


class Part:
    """An option that names another component: ``loader: Part[Loader] | None = None``.

    The user writes it like any component (``{name: hf, dataset: wikitext}``); the plan
    resolves it with the component that holds it, validating its options then (so a typo
    fails at ``lorapipe validate``), and hands the built component over in ``parts``
    under the option's dotted path (``self.parts["general.wiki.loader"]``).
    """

    def __init__(self, base: type[Component]) -> None:
        self.base = base

    def __class_getitem__(cls, base: type[Component]) -> Any:
        return Annotated[ComponentRef, cls(base)]


class Component(ABC):
    """Something a user picks by name in YAML.

    Each kind's base class below declares the kind once: ``kind`` (singular, in messages)
    and ``plural`` (its register hook is ``lorapipe_register_<plural>``; ``KINDS`` lists
    them, and the registry derives its hooks from it).
    """

    kind: ClassVar[str]
    plural: ClassVar[str]
    name: ClassVar[str]
    Options: ClassVar[type[Options]] = Options

    def __init__(self, options: Options | None = None, *, field: str | None = None,
                 parts: dict[str, Component] | None = None) -> None:
        self.options = options if options is not None else self.Options()
        # The dotted YAML path this instance was configured at (``data.validation.loader``).
        self.field = field or self.kind
        # The components its ``Part`` options name, built by the plan (see ``Part``).
        self.parts = parts or {}

    def config_error(self, message: str, option: str | None = None) -> ConfigError:
        """An error naming this component's YAML field (or one of its options): exit 2."""
        return ConfigError(f"{self.field}.{option}" if option else self.field, message)
