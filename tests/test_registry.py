"""The registry: names from register hooks, duplicate and unknown names explained."""

from __future__ import annotations

import types
from collections.abc import Iterator
from pathlib import Path

import pytest

from lorapipe.errors import ConfigError, UserError
from lorapipe.plugin import Loader, Options, RawRecord, hookimpl
from lorapipe.plugin_manager import build_plugin_manager
from lorapipe.registry import DuplicateComponentError, Registry


class WordsOptions(Options):
    path: str = "words.txt"


class WordsLoader(Loader):
    """A throw-away loader."""

    name = "words"
    Options = WordsOptions

    def records(self) -> Iterator[RawRecord]:
        path = Path(self.options.path)
        for number, word in enumerate(path.read_text().split(), start=1):
            yield RawRecord(str(path), f"{path}:{number}", data={"prompt": word, "response": word})


def _plugin(name: str, *classes: type) -> types.ModuleType:
    module = types.ModuleType(name)

    @hookimpl
    def lorapipe_register_loaders(register):  # noqa: ANN001, ANN202
        for cls in classes:
            register(cls)

    module.lorapipe_register_loaders = lorapipe_register_loaders
    return module


def test_registered_plugin_resolves_and_unregisters() -> None:
    pm = build_plugin_manager(load_entry_points=False)
    plugin = _plugin("words_plugin", WordsLoader)
    pm.register(plugin, name="words_plugin")
    assert Registry(pm).get("loader", "words", "data.loader.name") is WordsLoader
    pm.unregister(plugin)
    assert Registry(pm).names("loader") == []


def test_duplicate_name_names_both_providers() -> None:
    pm = build_plugin_manager(load_entry_points=False)

    class OtherWords(WordsLoader):
        name = "words"

    pm.register(_plugin("first_pkg", WordsLoader), name="first_pkg")
    pm.register(_plugin("second_pkg", OtherWords), name="second_pkg")
    with pytest.raises(DuplicateComponentError) as err:
        Registry(pm)
    message = str(err.value)
    assert "'words'" in message
    assert "first_pkg" in message and "second_pkg" in message


def test_unknown_name_lists_available_and_field() -> None:
    pm = build_plugin_manager(load_entry_points=False)
    pm.register(_plugin("words_plugin", WordsLoader), name="words_plugin")
    with pytest.raises(ConfigError) as err:
        Registry(pm).get("loader", "wrods", "data.loader.name")
    message = str(err.value)
    assert message.startswith("data.loader.name: unknown loader 'wrods'")
    assert "Available: words" in message
    assert "lorapipe plugins" in message


def test_registering_a_non_component_is_refused() -> None:
    pm = build_plugin_manager(load_entry_points=False)
    pm.register(_plugin("bad", dict), name="bad")
    with pytest.raises(Exception, match="not a subclass of lorapipe.plugin.Loader"):
        Registry(pm)


def test_builtins_are_all_registered_through_entry_points() -> None:
    registry = Registry(build_plugin_manager())
    assert "jsonl" in registry.names("loader")
    assert {"tokenizer", "llama3", "llama2"} <= set(registry.names("chat_template"))
    assert {"llama", "all_linear"} <= set(registry.names("target_detector"))
    assert {"nf4", "none"} <= set(registry.names("quantizer"))
    assert "perplexity" in registry.names("evaluator")
    assert "gguf" in registry.names("exporter")
    assert "lorapipe" in registry.provider("loader", "jsonl")


def test_component_missing_an_abstract_method_is_refused_by_name() -> None:
    """A plugin that forgets part of its kind's contract fails when it registers, naming
    what is missing, instead of failing (or silently doing less) mid-run."""

    class Incomplete(Loader):
        name = "incomplete"

    pm = build_plugin_manager(load_entry_points=False)
    pm.register(_plugin("half_done", Incomplete), name="half_done")
    with pytest.raises(UserError, match=r"half_done.*Incomplete.*does not implement records"):
        Registry(pm)
