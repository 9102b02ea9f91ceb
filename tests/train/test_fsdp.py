"""FSDP2 on the CPU: two processes (gloo) run `lorapipe train` from the shipped accelerate
config on the QLoRA quickstart and on DPO (configs/dpo.yaml from tiny-llama: the reference
forward with the adapters off runs sharded too), checkpoint, resume, and end where one
process ends."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

REPO = Path(__file__).resolve().parents[2]
STEPS = ["train.epochs=1", "train.max_steps=4", "train.save_steps=2", "train.eval_steps=2",
         "train.logging_steps=1", "adapter.dropout=0.0", "train.micro_batch_size=4"]


def _lorapipe(*args: str, launch: list[str] | None = None, env: dict | None = None
              ) -> subprocess.CompletedProcess:
    command = [*(launch or [sys.executable]), "-m", "lorapipe.cli", *args]
    result = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=600,
                            env={**os.environ, **(env or {})})
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result


def _settings(out: Path, accumulation: int, extra: tuple[str, ...] = ()) -> list[str]:
    sets = [*STEPS, *extra, f"train.gradient_accumulation_steps={accumulation}",
            f"output_dir={out}"]
    return [item for kv in sets for item in ("--set", kv)]


def _metrics(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def _adapter(out: Path) -> dict[str, torch.Tensor]:
    return load_file(str(out / "adapter" / "adapter_model.safetensors"))


FSDP = [sys.executable, "-m", "accelerate.commands.launch", "--config_file",
        str(REPO / "configs/accelerate/fsdp2.yaml"), "--num_processes", "2",
        "--main_process_port", "29533"]


@pytest.mark.parametrize(("config", "extra"), [
    ("configs/quickstart.yaml", ()),
    ("configs/dpo.yaml", ("model.name_or_path=tiny-llama", "train.eval_steps=2")),
], ids=["sft", "dpo"])
def test_fsdp_qlora_trains_checkpoints_resumes_and_matches_one_process(
        config: str, extra: tuple[str, ...], tmp_path: Path) -> None:
    single, sharded = tmp_path / "single", tmp_path / "fsdp"
    _lorapipe("prepare", config, *_settings(single, 2, extra))
    shutil.copytree(single / "data", sharded / "data")
    shutil.copy(single / ".lorapipe-run", sharded)  # a run directory, so train adopts it

    # 2 processes × micro 4 × accumulation 1 = 1 process × micro 4 × accumulation 2
    _lorapipe("train", config, *_settings(single, 2, extra))
    _lorapipe("train", config, *_settings(sharded, 1, extra), launch=FSDP)
    first = _adapter(sharded)
    expected = _adapter(single)
    assert first.keys() == expected.keys() and len(first) == 2 * 7 * 4  # A, B × 7 × 4 layers
    for key, value in expected.items():
        torch.testing.assert_close(first[key], value, rtol=0, atol=1e-5, msg=key)

    # each process held half of the model, its 4-bit weights stored in fp32 words
    placed = next(m for m in _metrics(sharded) if m.get("event") == "processes")
    assert placed["kind"] == "fsdp2" and placed["weight_dtypes"] == ["float32"]
    for held in placed["weight_bytes_per_process"]:
        assert held == pytest.approx(placed["weight_bytes"] / 2, rel=0.02)

    # kill the last checkpoint and the published adapter; resume under FSDP from step 2
    shutil.rmtree(sharded / "checkpoints" / "step-4")
    shutil.rmtree(sharded / "adapter")
    _lorapipe("train", config, *_settings(sharded, 1, extra), "--resume", launch=FSDP)
    resumed = _adapter(sharded)
    for key, value in first.items():
        torch.testing.assert_close(resumed[key], value, rtol=0, atol=1e-6, msg=key)
    assert [m["step"] for m in _metrics(sharded) if "eval_loss" in m] == [2, 4]
    if "dpo" in config:  # the rewards are the sharded run's, gathered over both processes
        steps = [m for m in _metrics(sharded) if "reward_accuracy" in m]
        assert steps and all(0 <= m["reward_accuracy"] <= 1 for m in steps)
