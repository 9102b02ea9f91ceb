"""A plain (non-editable) install ships exactly the `lorapipe` namespace, every sub-package."""

from __future__ import annotations

import configparser
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest


@pytest.fixture(scope="module")
def wheel(
    tmp_path_factory: pytest.TempPathFactory,
) -> zipfile.ZipFile:
    repo = Path(__file__).resolve().parents[1]
    out = tmp_path_factory.mktemp("wheel")
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "-q",
            "--no-deps",
            "--no-build-isolation",
            "-w",
            str(out),
            str(repo),
        ],
        check=True,
        capture_output=True,
    )
    (path,) = out.glob("lorapipe-*.whl")
    return zipfile.ZipFile(path)


def test_only_the_lorapipe_namespace_is_installed(wheel: zipfile.ZipFile) -> None:
    tops = {name.split("/")[0] for name in wheel.namelist()}
    assert tops == {"lorapipe", next(t for t in tops if t.endswith(".dist-info"))}


def test_every_source_package_is_in_the_wheel(wheel: zipfile.ZipFile) -> None:
    repo = Path(__file__).resolve().parents[1]
    names = set(wheel.namelist())
    for source_root, package in (("core", "lorapipe"), ("plugins", "lorapipe/plugins")):
        for module in (repo / source_root).rglob("*.py"):
            relative = module.relative_to(repo / source_root).as_posix()
            assert f"{package}/{relative}" in names, f"{module} is missing from the wheel"


def test_builtins_are_entry_points(wheel: zipfile.ZipFile) -> None:
    text = next(wheel.read(n).decode() for n in wheel.namelist() if n.endswith("entry_points.txt"))
    parser = configparser.ConfigParser()
    parser.read_string(text)
    assert parser["console_scripts"]["lorapipe"] == "lorapipe.cli:main"
    modules = set(parser["lorapipe.plugins"].values())
    assert "lorapipe.plugins.loaders.jsonl" in modules
    assert "lorapipe.plugins.exporters.gguf.exporter" in modules
