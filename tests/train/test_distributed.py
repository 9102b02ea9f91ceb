"""`torchrun --nproc_per_node 2` on the CPU (gloo): ranks stay in sync and match one process."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from tinyrun import config, make_data, make_model, make_pairs, run

SCRIPT = Path(__file__).with_name("train_script.py")


def _evals(out: Path) -> list[tuple[int, float]]:
    lines = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    return [(m["step"], m["eval_loss"]) for m in lines if "eval_loss" in m]


@pytest.mark.parametrize("objective", ["sft", "dpo"])
def test_two_processes_match_one_with_the_same_global_batch(objective: str,
                                                            tmp_path: Path) -> None:
    """sft on fp32; DPO on NF4 (its reference forward, adapters off, runs under DDP)."""
    ddp = tmp_path / "ddp"
    settings = dict(micro_batch_size=2, gradient_accumulation_steps=1, max_steps=4,
                    eval_steps=2, save_steps=2, objective={"name": objective})
    dpo = objective == "dpo"
    result = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
         str(SCRIPT), str(ddp), json.dumps(settings), "--save-weights",
         *(["--nf4", "--pairs"] if dpo else [])],
        capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    rank0, rank1 = (load_file(str(ddp / f"rank{r}.safetensors")) for r in (0, 1))
    assert all(torch.equal(rank0[k], rank1[k]) for k in rank0)  # in sync, bitwise

    single = tmp_path / "single"
    data = make_pairs if dpo else make_data
    run(single, make_model(nf4=dpo), data(24), data(6, seed=1),
        config(**{**settings, "gradient_accumulation_steps": 2}))  # 1 process × 2 micro × 2
    final = load_file(str(single / "checkpoints" / "step-4" / "adapter" /
                          "adapter_model.safetensors"))
    assert final.keys() == rank0.keys()
    for key, value in final.items():
        torch.testing.assert_close(rank0[key], value, rtol=0, atol=1e-5)
    # only the main process writes: one line per step, evaluations over both shards
    lines = [json.loads(x) for x in (ddp / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in lines if "loss" in m and "event" not in m] == [1, 2, 3, 4]
    assert [s for s, _ in _evals(ddp)] == [2, 4]
    assert [v for _, v in _evals(ddp)] == pytest.approx([v for _, v in _evals(single)], rel=1e-5)
