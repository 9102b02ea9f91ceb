"""The contrib distributions install like any third-party plugin and register.

A fresh virtual environment gets lorapipe and all five packages installed for real
(wheels built from copies of the sources, no network, no editable installs); its own
``lorapipe components`` must list every contributed name. The heavy dependencies
(torch, transformers, pyarrow, ...) come from the development environment through a
.pth file pointing at a view of its site-packages with every lorapipe distribution left
out, so nothing registers unless this install put it there.
"""

from __future__ import annotations

import shutil
import subprocess
import sysconfig
import venv
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
PACKAGES = ["tabular", "templates", "gpt2", "textmetrics", "onnx"]
NAMES = {
    "loaders": ["csv", "json", "parquet"],
    "chat_templates": ["alpaca", "chatml", "mistral", "vicuna"],
    "target_detectors": ["gpt2"],
    "evaluators": ["bleu", "exact_match", "rouge_l"],
    "exporters": ["onnx"],
}
_SKIP = ("lorapipe", "__editable__")


def _dependency_view(target: Path) -> Path:
    """Symlinks to the current site-packages entries, minus lorapipe's own."""
    site = Path(sysconfig.get_paths()["purelib"])
    target.mkdir()
    for entry in site.iterdir():
        if not entry.name.lower().replace("-", "_").startswith(_SKIP) and entry.suffix != ".pth":
            (target / entry.name).symlink_to(entry)
    return target


def _sources(tmp_path: Path) -> list[Path]:
    """Copies of lorapipe and the contrib packages, so building leaves no build/ or
    .egg-info/ in the working tree."""
    ignore = shutil.ignore_patterns("build", "*.egg-info", "__pycache__", "tests", ".*", "runs")
    copies = [tmp_path / "src" / "lorapipe"]
    shutil.copytree(REPO, copies[0], ignore=shutil.ignore_patterns(
        "build", "*.egg-info", "__pycache__", "tests", ".*", "runs", "contrib"))
    for name in PACKAGES:
        copies.append(tmp_path / "src" / name)
        shutil.copytree(REPO / "contrib" / name, copies[-1], ignore=ignore)
    return copies


def test_all_five_install_into_a_fresh_venv(tmp_path: Path) -> None:
    env = tmp_path / "venv"
    venv.EnvBuilder(with_pip=False).create(env)
    python = env / "bin" / "python"
    purelib = subprocess.run(
        [python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        check=True, capture_output=True, text=True).stdout.strip()
    view = _dependency_view(tmp_path / "deps")
    (Path(purelib) / "deps.pth").write_text(f"{view}\n")

    before = subprocess.run([python, "-c", "import lorapipe"], capture_output=True)
    assert before.returncode != 0  # nothing of lorapipe leaks in from the dev environment

    install = subprocess.run(
        [python, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation",
         "--no-index", *map(str, _sources(tmp_path))],
        capture_output=True, text=True, timeout=300)
    assert install.returncode == 0, install.stdout + install.stderr

    listed = subprocess.run([env / "bin" / "lorapipe", "components"],
                            capture_output=True, text=True, timeout=120)
    assert listed.returncode == 0, listed.stdout + listed.stderr
    sections = _sections(listed.stdout)
    for kind, names in NAMES.items():
        assert set(names) <= set(sections[kind]), (kind, listed.stdout)

    where = subprocess.run(
        [python, "-c", "import lorapipe_tabular, lorapipe_gpt2; "
         "print(lorapipe_tabular.__file__); print(lorapipe_gpt2.__file__)"],
        capture_output=True, text=True, check=True)
    assert all(line.startswith(purelib) for line in where.stdout.split())


def _sections(text: str) -> dict[str, list[str]]:
    """``lorapipe components`` output: a kind's plural, then indented ``name  doc`` lines."""
    sections: dict[str, list[str]] = {}
    current: list[str] = []
    for line in text.splitlines():
        if line and not line.startswith(" "):
            current = sections.setdefault(line.strip(), [])
        elif line.strip():
            current.append(line.split()[0])
    return sections


