"""The quickstart, shortened: the same stages and artifacts in a fraction of the time.

Imported by name (tests/ has no packages); ``finished_run`` in conftest.py runs it once
per session for every test that only reads a finished run.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

SHORT = [
    "train.epochs=1",
    "train.max_steps=30",  # fewer, and greedy replies are only spaces (tests/test_chat.py)
    "train.save_steps=6",
    "train.eval_steps=10",
    "train.logging_steps=2",
    "export.exporters.0.types=[q8_0]",
]


def run_quickstart(output_dir: Path, *extra: str, wait: bool = True):  # noqa: ANN201
    """``lorapipe run`` on the shortened quickstart: the finished process, or the running
    one with ``wait=False``."""
    args = [
        sys.executable, "-m", "lorapipe.cli", "run", "configs/quickstart.yaml",
        *[item for kv in [*SHORT, f"output_dir={output_dir}"] for item in ("--set", kv)],
        *extra,
    ]
    if not wait:
        return subprocess.Popen(args, cwd=REPO, stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL)
    return subprocess.run(args, cwd=REPO, capture_output=True, text=True, check=False)
