"""The GPU speed and memory options on the CPU: refused before any work where they cannot
run, SDPA chosen by default, and padding-free batches training exactly like padded ones."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from tinyrun import PAD, adapter_weights, config, make_data, make_model, run

from lorapipe.train.batching import collate, load_examples
from lorapipe.train.loss import loss_sum, trainable_tokens

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize(("setting", "field"), [
    ("train.kernels=liger", "train.kernels"),
    ("train.activation_offload=true", "train.activation_offload"),
    ("model.attn_implementation=flash_attention_2", "model.attn_implementation"),
])
def test_a_gpu_only_option_stops_a_cpu_run_before_any_work(tmp_path: Path, setting: str,
                                                           field: str) -> None:
    out = tmp_path / "run"
    command = [sys.executable, "-m", "lorapipe.cli", "run", "configs/quickstart.yaml",
               "--set", setting, "--set", f"output_dir={out}"]
    result = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=120)
    assert result.returncode == 2, result.stderr[-2000:]
    assert result.stderr.startswith(f"error: {field}: "), result.stderr
    assert "Traceback" not in result.stderr
    assert not (out / "data").exists()  # refused before prepare

    validate = subprocess.run([sys.executable, "-m", "lorapipe.cli", "validate",
                               "configs/quickstart.yaml", "--set", setting],
                              cwd=REPO, capture_output=True, text=True, timeout=120)
    assert validate.returncode == 0  # the config may be meant for a GPU machine: a note
    assert f"note: on this machine (cpu) the run would stop: {field}" in " ".join(
        validate.stdout.split())


def test_sdpa_is_the_default_attention_on_the_cpu(finished_run: Path) -> None:
    report = json.loads((finished_run / "model_report.json").read_text())
    assert report["model"]["attn_implementation"] == "sdpa"
    assert report["model"]["kernels"] == []


def test_a_padding_free_row_computes_the_padded_batchs_loss_and_gradients() -> None:
    model = make_model()
    examples = load_examples(make_data(4, seed=3))
    padded = collate([[example] for example in examples], PAD)
    free = collate([examples], PAD)  # one row, positions restarting at each example
    assert free["input_ids"].shape[0] == 1 and "attention_mask" not in free
    assert free["input_ids"].numel() == sum(len(ids) for ids, _ in examples)  # no padding
    assert trainable_tokens(free) == trainable_tokens(padded)  # first labels masked alike

    grads = []
    for batch in (padded, free):
        model.zero_grad()
        loss = loss_sum(model, batch)
        loss.backward()
        grads.append((loss.item(), [p.grad.clone() for p in model.parameters()
                                    if p.requires_grad]))
    (padded_loss, padded_grads), (free_loss, free_grads) = grads
    assert free_loss == pytest.approx(padded_loss, rel=1e-5)
    for a, b in zip(padded_grads, free_grads, strict=True):
        torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-6)


def test_padding_free_training_matches_padded_training_without_padding(tmp_path: Path) -> None:
    runs = {}
    for padding_free in (False, True):
        out = tmp_path / str(padding_free)
        run(out, make_model(), make_data(24), None,
            config(max_steps=4, padding_free=padding_free, group_by_length=False))
        runs[padding_free] = out
    for key, value in adapter_weights(runs[False]).items():
        torch.testing.assert_close(adapter_weights(runs[True])[key], value, rtol=0, atol=1e-5)
    logged = [json.loads(line) for line in (runs[True] / "metrics.jsonl").read_text().splitlines()]
    fractions = [m["padding_fraction"] for m in logged if "padding_fraction" in m]
    assert len(fractions) == 4 and set(fractions) == {0.0}
    padded = [json.loads(line) for line in (runs[False] / "metrics.jsonl").read_text().splitlines()]
    assert max(m.get("padding_fraction", 0) for m in padded) > 0.1  # there was padding to save


def test_bf16_weights_train_under_bf16_autocast_on_the_cpu(tmp_path: Path) -> None:
    """What model.dtype: bf16 (or auto on a CPU with bf16 units) trains like: the adapters
    in fp32, the matmuls autocast to bf16, and the run follows the fp32 one closely."""
    from accelerate.state import AcceleratorState

    from lorapipe.train.distributed import make_accelerator

    losses = {}
    try:
        for dtype in (torch.float32, torch.bfloat16):
            AcceleratorState._reset_state()  # one precision per process, as in a real run
            model = make_model(dtype=dtype)
            if dtype == torch.bfloat16:
                assert make_accelerator(model).mixed_precision == "bf16"
                trainable = {p.dtype for p in model.parameters() if p.requires_grad}
                assert trainable == {torch.float32}
            out = tmp_path / str(dtype)
            run(out, model, make_data(24), None, config(max_steps=4))
            lines = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
            losses[dtype] = [m["loss"] for m in lines if "loss" in m and "event" not in m]
    finally:
        AcceleratorState._reset_state()
    assert losses[torch.bfloat16] != losses[torch.float32]  # it did compute in bf16
    assert losses[torch.bfloat16] == pytest.approx(losses[torch.float32], rel=2e-2)
    assert losses[torch.bfloat16][-1] < losses[torch.bfloat16][0]
