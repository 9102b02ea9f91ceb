"""The closing summary of ``lorapipe run``, for every shape a stage summary takes."""

from __future__ import annotations

from pathlib import Path

from rich.console import Console

from lorapipe.artifacts import RunPaths
from lorapipe.summary import print_run_summary


def test_stages_with_nothing_configured_say_so(tmp_path: Path) -> None:
    """``evaluate.evaluators: []`` and no exporters finish the run; the summary says why
    those stages did nothing instead of crashing on the missing scores."""
    console = Console(record=True, width=200)
    summaries = {
        "evaluate": {"evaluators": [], "note": "evaluate.evaluators is empty; nothing evaluated"},
        "merge": {"skipped": "merge.enabled is false"},
        "export": {"exporters": [], "note": "export.exporters is empty; nothing exported"},
    }
    print_run_summary(summaries, RunPaths(tmp_path), console)
    text = console.export_text()
    assert "evaluate.evaluators is empty; nothing evaluated" in text
    assert "export.exporters is empty; nothing exported" in text
    assert "skipped" in text
