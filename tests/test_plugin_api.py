"""The public plugin API: ``lorapipe.plugin`` is complete, and the built-in plugins and
contrib use nothing else."""

from __future__ import annotations

import ast
import inspect
import subprocess
import sys
from pathlib import Path

import pytest

import lorapipe.plugin

REPO = Path(__file__).resolve().parents[1]
# The plugin packages' own code (their tests may drive the engine like any user script),
# the built-ins first: they are registered exactly like third-party plugins.
PACKAGES = [REPO / "plugins",
            *sorted(p for p in (REPO / "contrib").glob("*/lorapipe_*") if p.is_dir())]


def _lorapipe_imports(path: Path) -> list[tuple[int, str]]:
    """Every ``lorapipe`` module a file imports, with its line."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), filename=str(path))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.append((node.lineno, node.module))
    return [(line, name) for line, name in found
            if name == "lorapipe" or name.startswith("lorapipe.")]


def test_every_plugin_package_is_scanned() -> None:
    names = {p.name for p in PACKAGES}
    assert {"plugins", "lorapipe_tabular", "lorapipe_templates", "lorapipe_gpt2",
            "lorapipe_textmetrics", "lorapipe_example"} <= names


@pytest.mark.parametrize("package", PACKAGES, ids=lambda p: p.name)
def test_plugins_import_only_the_public_api(package: Path) -> None:
    wrong = [f"{path.relative_to(REPO)}:{line} imports {name}"
             for path in sorted(package.rglob("*.py"))
             for line, name in _lorapipe_imports(path) if name != "lorapipe.plugin"]
    assert wrong == [], "plugins may import only lorapipe.plugin:\n" + "\n".join(wrong)


def test_every_public_name_resolves() -> None:
    for name in lorapipe.plugin.__all__:
        assert getattr(lorapipe.plugin, name) is not None, name


@pytest.mark.parametrize("base", ["Loader", "ChatTemplate", "TargetDetector", "Quantizer",
                                  "Evaluator", "Exporter"])
def test_component_bases_declare_their_contract(base: str) -> None:
    """Each kind's required methods are abstract, so an incomplete plugin is refused when
    it registers rather than failing (or silently doing less) during a run."""
    cls = getattr(lorapipe.plugin, base)
    assert inspect.isabstract(cls) and cls.__abstractmethods__


def test_importing_the_api_does_not_import_torch() -> None:
    """Plugin discovery imports every plugin module; one that only defines a loader must not
    pay for torch (the heavy helpers are imported on first use)."""
    code = "import sys, lorapipe.plugin; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout.strip()
    assert out == "False"


def test_every_kind_is_declared_once_and_has_its_hook() -> None:
    """The kinds come from the base classes; hookspecs.py holds exactly their hooks."""
    from lorapipe import hookspecs
    from lorapipe.components import KINDS
    from lorapipe.registry import HOOKS

    specs = {name for name in dir(hookspecs) if name.startswith("lorapipe_register_")}
    assert specs == set(HOOKS.values())
    assert set(HOOKS) == set(KINDS)
    for kind, base in KINDS.items():
        assert HOOKS[kind] == f"lorapipe_register_{base.plural}"
        assert getattr(lorapipe.plugin, base.__name__) is base  # public through the door
