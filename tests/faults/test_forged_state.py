"""A checkpoint's state.json edited by hand, its manifest re-hashed to match, is checked
for sane values (a manifest proves a file was not damaged, not that it is sane); so is
run.json when a run is resumed. Issue 27, item 0."""

from __future__ import annotations

import dataclasses
import json
import math
import shutil
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from lorapipe.cli import main
from lorapipe.context import RunContext
from lorapipe.manifest import problem, write_manifest
from lorapipe.pipeline import _end_stage, _read_run_json, _write_run_json
from lorapipe.plan import load_plan
from lorapipe.train import checkpoint
from lorapipe.train.checkpoint import TrainState, list_checkpoints, read_state

SAMPLE = Path(__file__).resolve().parents[2] / "configs" / "data" / "quickstart.jsonl"

# what the edit does, and the field the error must name (after "state.json: ")
FORGERIES: dict[str, tuple[Callable[[Any], Any], str]] = {
    "step 1e30": (lambda s: {**s, "step": 1e30}, "step: Input should be a valid integer"),
    "step -5": (lambda s: {**s, "step": -5}, "step: Input should be greater than"),
    "epoch -1": (lambda s: {**s, "epoch": -1}, "epoch: Input should be greater than"),
    "rollbacks 1e6": (lambda s: {**s, "rollbacks": 10**6}, "rollbacks: Input should be less"),
    "best_eval_loss -inf": (lambda s: {**s, "best_eval_loss": -math.inf},
                            "best_eval_loss: Input should be a finite number"),
    "an extra key": (lambda s: {**s, "lr_override": 1.0}, "lr_override: not a TrainState field"),
    "a list": (lambda s: [s], "Input should be an object"),
    "a string step": (lambda s: {**s, "step": str(s["step"])},
                      "step: Input should be a valid integer"),
}


@pytest.fixture(scope="module")
def base(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(config, run directory's parent): the quickstart's QLoRA (nf4) shrunk to three
    steps with a checkpoint and an evaluation at each; ``output_dir: run`` is relative, so
    a copy of the directory elsewhere has the same config hash."""
    root = tmp_path_factory.mktemp("forged")
    data = root / "data.jsonl"
    data.write_text("".join(SAMPLE.read_text().splitlines(keepends=True)[:40]))
    config = root / "run.yaml"
    config.write_text(yaml.safe_dump({
        "model": {"name_or_path": "tiny-llama", "quantizer": {"name": "nf4"}},
        "adapter": {"r": 4, "alpha": 8},
        "data": {"loader": {"name": "jsonl", "path": str(data)}, "max_length": 128,
                 "validation": {"count": 4}},
        "train": {"epochs": 1, "max_steps": 3, "micro_batch_size": 2,
                  "gradient_accumulation_steps": 1, "learning_rate": 2e-3, "save_steps": 1,
                  "eval_steps": 1, "logging_steps": 2},
        "output_dir": "run",
    }))
    made = root / "base"
    made.mkdir()
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(made)
        assert main(["prepare", str(config)]) == 0
        assert main(["train", str(config)]) == 0
    assert [s for s, _ in list_checkpoints(made / "run" / "checkpoints")] == [1, 2, 3]
    return config, made


@pytest.fixture
def run_copy(base: tuple[Path, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
             capsys: pytest.CaptureFixture) -> Iterator[tuple[Path, Path]]:
    """(config, run directory): a copy of the base run, the working directory its parent."""
    config, made = base
    shutil.copytree(made / "run", tmp_path / "run")
    monkeypatch.chdir(tmp_path)
    capsys.readouterr()
    yield config, tmp_path / "run"


def _forge(directory: Path, change: Callable[[Any], Any]) -> None:
    """Edit a checkpoint's state.json and re-hash its manifest, as a careful forger would."""
    path = directory / "state.json"
    path.write_text(json.dumps(change(json.loads(path.read_text()))))  # -inf: -Infinity
    write_manifest(directory)
    assert problem(directory) is None  # only the schema can tell


@pytest.mark.parametrize("forgery", FORGERIES)
def test_a_forged_newest_checkpoint_is_skipped_for_the_previous(
        forgery: str, run_copy: tuple[Path, Path], capsys: pytest.CaptureFixture) -> None:
    config, run = run_copy
    change, field = FORGERIES[forgery]
    _forge(run / "checkpoints" / "step-3", change)
    assert main(["train", str(config), "--resume"]) == 0
    out, err = capsys.readouterr()
    assert "Traceback" not in out + err
    assert "checkpoint step-3 is unusable" in err
    assert f"step-3/state.json: {field}" in err
    assert "resuming from run/checkpoints/step-2 (step 2/3)" in out
    retrained = read_state(run / "checkpoints" / "step-3" / "state.json")  # written anew
    assert retrained.step == 3 and problem(run / "checkpoints" / "step-3") is None


def test_no_valid_checkpoint_is_one_line_and_exit_2(run_copy: tuple[Path, Path],
                                                    capsys: pytest.CaptureFixture) -> None:
    config, run = run_copy
    chosen = ["step 1e30", "a list", "rollbacks 1e6"]
    for step, forgery in zip([3, 2, 1], chosen, strict=True):
        _forge(run / "checkpoints" / f"step-{step}", FORGERIES[forgery][0])
    assert main(["train", str(config), "--resume"]) == 2
    out, err = capsys.readouterr()
    assert "Traceback" not in out + err
    # one line (beside transformers' own "Loading weights" bar): no warnings before it
    errors = [line for line in err.splitlines() if line.startswith(("error", "warning"))]
    assert len(errors) == 1 and errors[0].startswith("error: no checkpoint in"), err
    assert err.rstrip().endswith(errors[0])
    for step, forgery in zip([3, 2, 1], chosen, strict=True):
        assert f"step-{step}/state.json: {FORGERIES[forgery][1]}" in errors[0]
    assert "resuming" not in out


@pytest.mark.parametrize("content", ['{"stages": [', '{"stages": {"train": {"status": 5}}}'])
def test_a_corrupt_run_json_stops_a_resume_in_one_line(
        content: str, run_copy: tuple[Path, Path], capsys: pytest.CaptureFixture) -> None:
    config, run = run_copy
    (run / "run.json").write_text(content)
    assert main(["run", str(config), "--resume"]) == 2
    out, err = capsys.readouterr()
    assert "Traceback" not in out + err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and "run/run.json is damaged" in lines[0], err
    assert "--overwrite" in lines[0]
    # without --resume, and for a single stage, the same line: nothing in it is half-used
    for command in (["run", str(config)], ["prepare", str(config)]):
        assert main(command) == 2
        assert "run/run.json is damaged" in capsys.readouterr().err
    assert (run / "run.json").read_text() == content  # left for the user to look at


def test_what_a_real_run_writes_passes_the_schema(run_copy: tuple[Path, Path]) -> None:
    config, run = run_copy
    for _, directory in list_checkpoints(run / "checkpoints"):
        written = json.loads((directory / "state.json").read_text())
        assert dataclasses.asdict(read_state(directory / "state.json")) == written
    # every field set, as a long run with a rollback, trackers and a NaN step writes them
    full = TrainState(step=40, epoch=2, step_in_epoch=3, trained_tokens=2**40,
                      best_eval_loss=1.25, best_step=40, evals_without_improvement=3,
                      nonfinite_steps=70, spikes=50, rollbacks=checkpoint.MAX_ROLLBACKS,
                      config_hash="0123456789abcdef", world_size=8,
                      unlogged={"loss_sum": math.nan, "trainable_tokens": 5, "real_tokens": 7,
                                "batch_tokens": 8},
                      recent_losses=[2.5, 2.0], recent_grad_norms=[0.5, 1.5],
                      tracker_ids={"wandb": "a1b2", "mlflow": "c3d4"})
    saved = run / "full.json"
    saved.write_text(json.dumps(dataclasses.asdict(full)))  # as save_checkpoint does
    assert repr(read_state(saved)) == repr(full)  # NaN != NaN, its repr is equal

    ctx = RunContext(load_plan(config), resume=True)
    assert _read_run_json(ctx) == json.loads((run / "run.json").read_text())
    record = {"stages": {"merge": {"status": "running", "started_at": time.time()}}}
    _write_run_json(ctx, record)
    assert _read_run_json(ctx) == record
    _end_stage(ctx, record, "merge", time.perf_counter(), status="failed", error="boom")
    assert _read_run_json(ctx) == record
    _end_stage(ctx, record, "merge", time.perf_counter(), status="done",
               summary={"anything": [math.inf, None, {"nested": "x"}]})
    assert _read_run_json(ctx) == record
