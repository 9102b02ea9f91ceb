"""Entry-point discovery end to end: a real distribution pip-installed during the test."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import yaml

GOOD_PLUGIN = '''
from lorapipe.plugin import Loader, Options, RawRecord, hookimpl


class WordlistOptions(Options):
    path: str


class WordlistLoader(Loader):
    """One word per line."""

    name = "wordlist"
    Options = WordlistOptions

    def records(self):
        with open(self.options.path, encoding="utf-8") as handle:
            for number, word in enumerate(handle, start=1):
                yield RawRecord(self.options.path, f"{self.options.path}:{number}",
                                data={"prompt": word.strip(), "response": word.strip()})


@hookimpl
def lorapipe_register_loaders(register):
    register(WordlistLoader)
'''

BROKEN_PLUGIN = 'raise RuntimeError("this plugin is broken on purpose")\n'


def _make_distribution(root: Path, dist: str, module: str, source: str) -> Path:
    project = root / dist
    (project / module).mkdir(parents=True)
    (project / module / "__init__.py").write_text(source)
    (project / "pyproject.toml").write_text(
        textwrap.dedent(f"""
        [build-system]
        requires = ["setuptools>=61"]
        build-backend = "setuptools.build_meta"

        [project]
        name = "{dist}"
        version = "1.2.3"

        [project.entry-points."lorapipe.plugins"]
        {module} = "{module}"

        [tool.setuptools]
        packages = ["{module}"]
    """)
    )
    return project


@pytest.fixture(scope="module")
def plugin_site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A site directory holding one working and one broken third-party plugin."""
    root = tmp_path_factory.mktemp("plugins")
    site = root / "site"
    for dist, module, source in [
        ("lorapipe-wordlist", "lorapipe_wordlist", GOOD_PLUGIN),
        ("lorapipe-broken", "lorapipe_broken", BROKEN_PLUGIN),
    ]:
        project = _make_distribution(root, dist, module, source)
        subprocess.run(
            [
                sys.executable,
                "-m",
                "pip",
                "install",
                "-q",
                "--no-deps",
                "--no-build-isolation",
                "--target",
                str(site),
                str(project),
            ],
            check=True,
            capture_output=True,
        )
    return site


def _lorapipe(site: Path, *args: str, env: dict[str, str] | None = None):  # noqa: ANN202
    environ = {**os.environ, "PYTHONPATH": str(site), **(env or {})}
    return subprocess.run(
        [sys.executable, "-m", "lorapipe.cli", *args],
        capture_output=True,
        text=True,
        env=environ,
        check=False,
    )


def test_installed_plugin_is_discovered_and_broken_one_reported(plugin_site: Path) -> None:
    result = _lorapipe(plugin_site, "plugins", "--json")
    assert result.returncode == 0, result.stderr
    plugins = {p["name"]: p for p in json.loads(result.stdout)}
    good = plugins["lorapipe_wordlist"]
    assert good["distribution"] == "lorapipe-wordlist" and good["version"] == "1.2.3"
    assert good["hooks"] == ["lorapipe_register_loaders"] and good["error"] is None
    broken = plugins["lorapipe_broken"]
    assert "this plugin is broken on purpose" in broken["error"]
    assert plugins["jsonl"]["distribution"] == "lorapipe"

    table = _lorapipe(plugin_site, "plugins")
    assert "lorapipe_broken" in table.stdout and "failed" in table.stdout


def test_plugin_component_resolves_by_name(plugin_site: Path, tmp_path: Path) -> None:
    components = _lorapipe(plugin_site, "components", "loaders")
    assert "wordlist" in components.stdout and "jsonl" in components.stdout

    words = tmp_path / "words.txt"
    words.write_text("hello\n")
    config = {
        "model": {"name_or_path": "tiny-llama"},
        "data": {"loader": {"name": "wordlist", "path": str(words)}},
        "output_dir": str(tmp_path / "run"),
    }
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    result = _lorapipe(plugin_site, "validate", str(path))
    assert result.returncode == 0, result.stderr
    assert "loader 'wordlist'" in result.stdout

    typo = _lorapipe(plugin_site, "validate", str(path), "--set", "data.loader.paht=x")
    assert typo.returncode == 2
    assert "data.loader.paht: unknown option for loader 'wordlist'" in typo.stderr


def test_broken_plugin_does_not_stop_validate(plugin_site: Path, repo_root: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "lorapipe.cli", "validate", "configs/quickstart.yaml"],
        capture_output=True,
        text=True,
        cwd=repo_root,
        check=False,
        env={**os.environ, "PYTHONPATH": str(plugin_site)},
    )
    assert result.returncode == 0, result.stderr


def test_disabled_plugin_is_not_imported(plugin_site: Path) -> None:
    result = _lorapipe(
        plugin_site,
        "plugins",
        "--json",
        env={"LORAPIPE_DISABLE_PLUGINS": "lorapipe_broken, lorapipe_wordlist"},
    )
    plugins = {p["name"]: p for p in json.loads(result.stdout)}
    assert plugins["lorapipe_broken"]["disabled"] and plugins["lorapipe_broken"]["error"] is None
    assert plugins["lorapipe_wordlist"]["hooks"] == []
    components = _lorapipe(
        plugin_site, "components", "loader", env={"LORAPIPE_DISABLE_PLUGINS": "lorapipe_wordlist"}
    )
    assert "wordlist" not in components.stdout
