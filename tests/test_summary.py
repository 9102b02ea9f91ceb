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


def test_the_summary_shows_general_text_and_flags_forgetting() -> None:
    from lorapipe.summary import _evaluate_line

    summary = {"perplexity": {
        "base": {"response": 10.0}, "finetuned": {"response": 5.0}, "split": "test",
        "general": {"wiki": {"base": 20.0, "finetuned": 23.0, "increase": 0.15,
                             "forgetting": True}}}}
    line = _evaluate_line(summary, None)
    assert "perplexity.response 10 → 5" in line
    assert "perplexity on wiki 20 → 23 (+15.0%) FORGETTING" in line
    assert line.endswith("(on the held-out test split)")
