"""Stopping at any point and resuming ends with the adapter an uninterrupted run gives."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import torch
from tinyrun import adapter_weights, config, make_data, make_model, run

from lorapipe.manifest import problem
from lorapipe.train.checkpoint import list_checkpoints

SCRIPT = Path(__file__).with_name("train_script.py")
# Dropout on, so the restored RNG state matters; evaluation on, so best tracking resumes too;
# logging every 3 steps and checkpoints every 2, so a resume starts inside a metrics window.
SETTINGS = dict(epochs=2, micro_batch_size=2, gradient_accumulation_steps=2, save_steps=2,
                eval_steps=3, warmup_steps=2, logging_steps=3)


def _start(out: Path) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, str(SCRIPT), str(out), json.dumps(SETTINGS), "--slow", "0.1",
         "--dropout", "0.1"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _wait_for(path: Path, proc: subprocess.Popen, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert proc.poll() is None, proc.communicate()[0]
        assert time.monotonic() < deadline, "training never reached the checkpoint"
        time.sleep(0.02)


def _resume(out: Path) -> dict:
    return run(out, make_model(dropout=0.1), make_data(24), make_data(6, seed=1),
               config(**SETTINGS), resume=True)


def _losses(out: Path) -> list[tuple[int, float]]:
    lines = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    return [(m["step"], m.get("loss", m.get("eval_loss")), m.get("trainable_tokens"))
            for m in lines if "event" not in m]


def test_kill_and_sigterm_then_resume_give_the_identical_adapter(tmp_path: Path) -> None:
    killed, stopped = tmp_path / "killed", tmp_path / "stopped"
    to_kill, to_stop = _start(killed), _start(stopped)  # side by side: start-up dominates
    _wait_for(stopped / "checkpoints" / "step-2" / "manifest.json", to_stop)
    to_stop.send_signal(signal.SIGTERM)
    _wait_for(killed / "checkpoints" / "step-4" / "manifest.json", to_kill)
    to_kill.kill()  # SIGKILL: no chance to clean up
    to_kill.wait()
    output = to_stop.communicate(timeout=120)[0]
    assert to_stop.returncode == 130, output
    assert "Resume with: lorapipe train CONFIG --resume" in output
    step, path = list_checkpoints(stopped / "checkpoints")[-1]
    assert 2 <= step < 12 and problem(path) is None  # the step it was in finished and was saved

    reference = tmp_path / "reference"
    expected = run(reference, make_model(dropout=0.1), make_data(24), make_data(6, seed=1),
                   config(**SETTINGS))
    want = adapter_weights(reference)
    for out in (killed, stopped):
        summary = _resume(out)
        assert summary["steps"] == expected["steps"] == 12
        assert summary["best_step"] == expected["best_step"]
        got = adapter_weights(out)
        assert got.keys() == want.keys()
        assert all(torch.equal(got[k], want[k]) for k in want), out.name  # bitwise
        assert _losses(out) == _losses(reference)  # same batches, same lr, same dropout masks
