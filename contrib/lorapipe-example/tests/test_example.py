"""The worked example: installs, shows up, resolves by name, loads data, and uninstalls."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest
import yaml

PACKAGE = Path(__file__).resolve().parents[1]
REPO = PACKAGE.parents[1]

DIALOGUES = """System: You are terse.
User: What is 2 plus 2?
Assistant: 4.

User: Name a colour.
Assistant: Blue,
or green.

Narrator: this block is broken.
User: hi
Assistant: hello
"""


@pytest.fixture(scope="module")
def venv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh environment that sees this interpreter's packages, so installs stay local."""
    root = tmp_path_factory.mktemp("venv") / "env"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(root)], check=True)
    inner = Path(
        subprocess.run(
            [
                root / "bin" / "python",
                "-c",
                "import sysconfig; print(sysconfig.get_paths()['purelib'])",
            ],
            check=True,
            capture_output=True,
            text=True,
        ).stdout.strip()
    )
    outer = sysconfig.get_paths()["purelib"]
    # addsitedir (not a bare path line) so the outer .pth files, lorapipe's editable
    # install among them, are processed too.
    (inner / "outer.pth").write_text(f"import site; site.addsitedir({outer!r})\n")
    return root


def _pip(venv: Path, *args: str) -> None:
    subprocess.run(
        [sys.executable, "-m", "pip", "--python", str(venv / "bin" / "python"), *args],
        check=True,
        capture_output=True,
    )


def _lorapipe(venv: Path, *args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    return subprocess.run(
        [venv / "bin" / "python", "-m", "lorapipe.cli", *args],
        capture_output=True,
        text=True,
        env=env,
        cwd=cwd,
        check=False,
    )


def test_install_use_and_uninstall(venv: Path, tmp_path: Path) -> None:
    def plugin_names() -> set[str]:
        result = _lorapipe(venv, "plugins", "--json")
        assert result.returncode == 0, result.stderr
        return {p["name"] for p in json.loads(result.stdout)}

    if "example_dialogue" in plugin_names():
        pytest.skip("lorapipe-example is installed in the outer environment already")

    _pip(venv, "install", "-q", "--no-deps", "--no-build-isolation", str(PACKAGE))
    assert "example_dialogue" in plugin_names()
    assert "dialogue" in _lorapipe(venv, "components", "loaders").stdout

    chats = tmp_path / "chats.txt"
    chats.write_text(DIALOGUES)
    config = {
        "model": {"name_or_path": "tiny-llama", "quantizer": "none"},
        "data": {"loader": {"name": "dialogue", "path": str(chats)}, "validation": {"count": 1}},
        "output_dir": str(tmp_path / "run"),
    }
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    assert _lorapipe(venv, "validate", str(path)).returncode == 0

    prepared = _lorapipe(venv, "prepare", str(path))
    assert prepared.returncode == 0, prepared.stderr
    report = json.loads((tmp_path / "run" / "data" / "report.json").read_text())
    assert report["records_read"] == 3
    assert report["kept"] == 2
    assert report["dropped"] == {"unknown_role": 1}

    _pip(venv, "uninstall", "-q", "-y", "lorapipe-example")
    assert "example_dialogue" not in plugin_names()
    gone = _lorapipe(venv, "validate", str(path))
    assert gone.returncode == 2 and "unknown loader 'dialogue'" in gone.stderr


def test_blocks_become_conversations(tmp_path: Path) -> None:
    sys.path.insert(0, str(PACKAGE))
    try:
        from lorapipe_example.dialogue import DialogueLoader
    finally:
        sys.path.remove(str(PACKAGE))
    chats = tmp_path / "chats.txt"
    chats.write_text(DIALOGUES)
    records = list(DialogueLoader(DialogueLoader.Options(path=str(chats))).records())
    assert [r.location for r in records] == [f"{chats}:1", f"{chats}:5", f"{chats}:9"]
    assert records[0].data == {
        "messages": [
            {"role": "system", "content": "You are terse."},
            {"role": "user", "content": "What is 2 plus 2?"},
            {"role": "assistant", "content": "4."},
        ]
    }
    assert records[1].data["messages"][1]["content"] == "Blue,\nor green."
    assert records[2].error.reason == "unknown_role"
