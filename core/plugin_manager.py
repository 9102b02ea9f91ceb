"""Builds the plugin manager: hook specs + plugin modules found through entry points.

Named ``plugin_manager``, not ``plugins``, because ``lorapipe.plugins`` is the
built-ins package; one import name cannot be both.

Discovery goes entry point (group ``lorapipe.plugins``) → stevedore (imports the module,
reports import failures) → pluggy (registers the module's hook implementations). A plugin
whose import raises is recorded with its error and skipped, so one broken package never
stops lorapipe from starting; ``lorapipe plugins`` shows it.
"""

from __future__ import annotations

import functools
import importlib.metadata
import os
import traceback
from dataclasses import dataclass, field

import pluggy
from stevedore import NamedExtensionManager

from lorapipe import hookspecs

NAMESPACE = "lorapipe.plugins"
DISABLE_ENV = "LORAPIPE_DISABLE_PLUGINS"


@dataclass(frozen=True)
class PluginInfo:
    """What ``lorapipe plugins`` shows about one entry point."""

    name: str
    module: str
    distribution: str | None
    version: str | None
    hooks: list[str] = field(default_factory=list)
    error: str | None = None
    disabled: bool = False


class PluginManager(pluggy.PluginManager):
    """pluggy's manager plus the record of what was discovered and what failed."""

    def __init__(self) -> None:
        super().__init__(hookspecs.PROJECT)
        self.add_hookspecs(hookspecs)
        self.discovered: dict[str, PluginInfo] = {}

    def describe(self, plugin_name: str) -> str:
        """A provider's name as a user should see it in error messages."""
        info = self.discovered.get(plugin_name)
        if info is None or info.distribution is None:
            return f"plugin '{plugin_name}'"
        return f"plugin '{plugin_name}' ({info.distribution} {info.version})"

    def infos(self) -> list[PluginInfo]:
        """Every discovered plugin with the hooks it implements, failures included."""
        result = []
        for name, info in sorted(self.discovered.items()):
            module = self.get_plugin(name)
            hooks = []
            if module is not None:
                hooks = sorted(caller.name for caller in self.get_hookcallers(module) or [])
            result.append(
                PluginInfo(
                    name=info.name,
                    module=info.module,
                    distribution=info.distribution,
                    version=info.version,
                    hooks=hooks,
                    error=info.error,
                    disabled=info.disabled,
                )
            )
        return result


def disabled_plugin_names() -> set[str]:
    """Names in ``LORAPIPE_DISABLE_PLUGINS`` (comma separated)."""
    raw = os.environ.get(DISABLE_ENV, "")
    return {name.strip() for name in raw.split(",") if name.strip()}


def _entry_points() -> list[importlib.metadata.EntryPoint]:
    # importlib.metadata, unlike stevedore's cached entry points, knows each one's
    # distribution, which `lorapipe plugins` and duplicate-name errors report.
    seen: dict[str, importlib.metadata.EntryPoint] = {}
    for ep in importlib.metadata.entry_points(group=NAMESPACE):
        seen.setdefault(ep.name, ep)
    return list(seen.values())


def build_plugin_manager(*, load_entry_points: bool = True) -> PluginManager:
    """A fresh manager; tests pass ``load_entry_points=False`` and register their own."""
    pm = PluginManager()
    if not load_entry_points:
        return pm
    disabled = disabled_plugin_names()
    eps = _entry_points()
    for ep in eps:
        dist = ep.dist
        pm.discovered[ep.name] = PluginInfo(
            name=ep.name,
            module=ep.value,
            distribution=dist.metadata["Name"] if dist else None,
            version=dist.version if dist else None,
            disabled=ep.name in disabled,
        )

    def on_failure(_manager: object, ep: importlib.metadata.EntryPoint, err: Exception) -> None:
        detail = "".join(traceback.format_exception_only(type(err), err)).strip()
        info = pm.discovered[ep.name]
        pm.discovered[ep.name] = PluginInfo(
            name=info.name,
            module=info.module,
            distribution=info.distribution,
            version=info.version,
            error=detail,
        )

    wanted = [ep.name for ep in eps if ep.name not in disabled]
    extensions = NamedExtensionManager(
        NAMESPACE,
        names=wanted,
        name_order=True,
        on_load_failure_callback=on_failure,
        on_missing_entrypoints_callback=None,
    )
    for ext in extensions:
        try:
            pm.register(ext.plugin, name=ext.name)
        except Exception as err:  # a malformed hookimpl is the plugin's failure, not ours
            on_failure(None, ext.entry_point, err)
    return pm


@functools.cache
def get_plugin_manager() -> PluginManager:
    """The process-wide manager, loading entry points once on first use."""
    return build_plugin_manager()
