"""Name → component class maps, one per kind, built from the ``register`` hooks."""

from __future__ import annotations

import inspect
from collections.abc import Callable

from pydantic import ValidationError

from lorapipe.component import Component
from lorapipe.components import KINDS
from lorapipe.errors import ConfigError, UserError
from lorapipe.plugin_manager import PluginManager, get_plugin_manager

# Each kind's plural, as users see it, and the hook that fills its map: from ``KINDS``.
PLURALS: dict[str, str] = {kind: base.plural for kind, base in KINDS.items()}
HOOKS: dict[str, str] = {kind: f"lorapipe_register_{plural}" for kind, plural in PLURALS.items()}


class DuplicateComponentError(UserError):
    """Two plugins registered the same name for one kind."""


class Registry:
    """Every registered component, by kind and name, with the plugin that provided it."""

    def __init__(self, pm: PluginManager) -> None:
        self._pm = pm
        self._classes: dict[str, dict[str, type[Component]]] = {}
        self._providers: dict[str, dict[str, str]] = {}
        for kind, hook_name in HOOKS.items():
            self._collect(kind, hook_name)

    def _collect(self, kind: str, hook_name: str) -> None:
        classes: dict[str, type[Component]] = {}
        providers: dict[str, str] = {}
        base = KINDS[kind]
        hook = getattr(self._pm.hook, hook_name)
        # Each implementation is called on its own so every registration knows its provider.
        for impl in reversed(hook.get_hookimpls()):
            provider = self._pm.describe(impl.plugin_name)
            register = self._registrar(kind, base, classes, providers, provider)
            impl.function(**{arg: register for arg in impl.argnames})
        self._classes[kind] = classes
        self._providers[kind] = providers

    @staticmethod
    def _registrar(
        kind: str,
        base: type[Component],
        classes: dict[str, type[Component]],
        providers: dict[str, str],
        provider: str,
    ) -> Callable[[type], None]:
        def register(cls: type) -> None:
            if not (isinstance(cls, type) and issubclass(cls, base)):
                raise UserError(
                    f"{provider} registered {cls!r} as a {kind}, "
                    f"but it is not a subclass of lorapipe.plugin.{base.__name__}"
                )
            if inspect.isabstract(cls):
                missing = ", ".join(sorted(cls.__abstractmethods__))
                raise UserError(
                    f"{provider} registered {cls.__name__} as a {kind}, but it does not "
                    f"implement {missing} (see lorapipe.plugin.{base.__name__})"
                )
            name = getattr(cls, "name", None)
            if not isinstance(name, str) or not name:
                raise UserError(f"{provider} registered {cls.__name__} without a `name`")
            if name in classes:
                raise DuplicateComponentError(
                    f"{kind} name '{name}' is registered twice: by {providers[name]} "
                    f"({classes[name].__module__}.{classes[name].__qualname__}) and by "
                    f"{provider} ({cls.__module__}.{cls.__qualname__}). "
                    f"Uninstall or disable one of them (LORAPIPE_DISABLE_PLUGINS=<plugin>)."
                )
            classes[name] = cls
            providers[name] = provider

        return register

    def names(self, kind: str) -> list[str]:
        return sorted(self._classes[kind])

    def classes(self, kind: str) -> list[type[Component]]:
        return [self._classes[kind][name] for name in self.names(kind)]

    def with_defaults(self, kind: str, field: str) -> list[Component]:
        """One instance of every class of ``kind`` that its default options can build (one
        with required options is left out: only a config that names it can build it), each
        configured at ``field``; in name order."""
        built = []
        for cls in self.classes(kind):
            try:
                options = cls.Options()
            except ValidationError:
                continue
            built.append(cls(options, field=field))
        return built

    def provider(self, kind: str, name: str) -> str:
        return self._providers[kind][name]

    def get(self, kind: str, name: str, field: str) -> type[Component]:
        """The class registered as ``name``; unknown names fail naming the YAML ``field``."""
        try:
            return self._classes[kind][name]
        except KeyError:
            available = ", ".join(self.names(kind)) or "none"
            label = kind.replace("_", " ")
            raise ConfigError(
                field,
                f"unknown {label} '{name}'. Available: {available}. "
                "Is the plugin that provides it installed? (lorapipe plugins)",
            ) from None


def get_registry(pm: PluginManager | None = None) -> Registry:
    """A registry over ``pm``, or over the process-wide plugin manager."""
    return Registry(pm if pm is not None else get_plugin_manager())
