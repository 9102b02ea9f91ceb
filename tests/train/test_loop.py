"""The loop: exact accumulation, instability guard, early stopping, checkpoint fallback."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from tinyrun import adapter_weights, config, make_data, make_model, run

from lorapipe.config import TrainConfig
from lorapipe.errors import UserError
from lorapipe.train.checkpoint import list_checkpoints, newest_valid


def _metrics(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def test_accumulation_is_exact_across_micro_batch_splits(tmp_path: Path) -> None:
    data = make_data(16, lengths=(3, 48))  # very different lengths: per-batch means would differ
    results = {}
    for micro, accum in ((4, 1), (1, 4)):
        out = tmp_path / f"{micro}x{accum}"
        cfg = config(micro_batch_size=micro, gradient_accumulation_steps=accum, max_steps=4,
                     save_steps=100)
        run(out, make_model(), data, None, cfg)
        results[(micro, accum)] = (adapter_weights(out), [m["loss"] for m in _metrics(out)
                                                          if "loss" in m and "event" not in m])
    (a, loss_a), (b, loss_b) = results.values()
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=1e-5)
    assert loss_a == pytest.approx(loss_b, rel=1e-5)
    assert any(v.abs().sum() > 0 for k, v in a.items() if "lora_B" in k)  # it did train


def test_nonfinite_steps_are_skipped_and_a_streak_rolls_back(tmp_path: Path) -> None:
    model = make_model()
    poisoned_calls, calls = {2, 6, 7}, [0]

    def poison(module, inputs, output):  # a real forward hook: NaN activations on some steps
        calls[0] += 1
        return output * float("nan") if calls[0] in poisoned_calls else output

    layer = model.base_model.model.model.layers[0].self_attn.q_proj
    layer.register_forward_hook(poison)
    settings = dict(micro_batch_size=2, gradient_accumulation_steps=1, max_steps=10,
                    save_steps=4, max_nonfinite_steps=2, lr_scheduler="constant", warmup_steps=0)
    summary = run(tmp_path, model, make_data(24), None, config(**settings))
    events = [m for m in _metrics(tmp_path) if "event" in m]
    assert [e["event"] for e in events] == ["nonfinite_skip", "nonfinite_skip", "nonfinite_skip",
                                            "rollback", "end"]
    assert [e["step"] for e in events[:3]] == [2, 6, 7]
    assert events[3]["checkpoint"] == "step-4" and events[3]["lr"] == pytest.approx(5e-4)
    assert summary["nonfinite_steps"] == 3 and summary["rollbacks"] == 1
    assert summary["steps"] == 10
    lrs = [m["lr"] for m in _metrics(tmp_path) if "loss" in m and "event" not in m]
    # steps 1-6 logged, step 7 triggered the rollback to step 4, then steps 5-10 at half the lr
    assert lrs == pytest.approx([1e-3] * 6 + [5e-4] * 6)
    for _, path in list_checkpoints(tmp_path / "checkpoints"):
        for name, tensor in load_file(str(path / "adapter" / "adapter_model.safetensors")).items():
            assert torch.isfinite(tensor).all(), (path, name)

    # the halving is part of the checkpointed state: a resumed run keeps training at half
    state = json.loads((tmp_path / "checkpoints" / "step-10" / "state.json").read_text())
    assert state["rollbacks"] == 1 and state["step"] == 10
    summary = run(tmp_path, make_model(), make_data(24), None,
                  config(**{**settings, "max_steps": 12}), resume=True)
    assert summary["steps"] == 12 and summary["rollbacks"] == 1
    lrs = [m["lr"] for m in _metrics(tmp_path) if "loss" in m and "event" not in m]
    assert lrs == pytest.approx([1e-3] * 6 + [5e-4] * 8)


def test_early_stopping_stops_and_keeps_the_best(tmp_path: Path) -> None:
    # Memorising one sequence at a high rate makes the loss on other text rise.
    one = make_data(1, seed=5, lengths=(30, 31))
    train = one.select([0] * 16)
    cfg = config(micro_batch_size=2, gradient_accumulation_steps=1, learning_rate=0.05,
                 max_steps=60, eval_steps=1, save_steps=100, save_total_limit=1,
                 early_stopping={"patience": 2, "min_delta": 0.0}, warmup_steps=0)
    summary = run(tmp_path, make_model(), train, make_data(4, seed=9), cfg)
    evals = [m for m in _metrics(tmp_path) if "eval_loss" in m]
    assert summary["stopped_early"] and summary["steps"] < 60
    best = min(evals, key=lambda m: m["eval_loss"])
    assert summary["best_step"] == best["step"] and evals[-1]["step"] == summary["steps"]
    assert all(m["eval_loss"] >= best["eval_loss"] for m in evals[-2:])
    kept = adapter_weights(tmp_path)
    best_ckpt = tmp_path / "checkpoints" / f"step-{best['step']}"
    assert best_ckpt.is_dir()  # kept beyond save_total_limit because it is the best
    for key, value in load_file(str(best_ckpt / "adapter" / "adapter_model.safetensors")).items():
        assert torch.equal(kept[key], value)
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from lorapipe.model.source import resolve_model_path

    base = AutoModelForCausalLM.from_pretrained(resolve_model_path("tiny-llama"))
    PeftModel.from_pretrained(base, tmp_path / "adapter")  # PEFT itself loads adapter/


def test_corrupt_newest_checkpoint_falls_back_to_the_previous(tmp_path: Path, capsys) -> None:
    data = make_data(24)
    run(tmp_path, make_model(), data, None, config(max_steps=6, save_steps=2))
    steps = [s for s, _ in list_checkpoints(tmp_path / "checkpoints")]
    assert steps == [2, 4, 6]  # keep the last 3 (step 0 rotated out)
    newest = tmp_path / "checkpoints" / "step-6"
    blob = bytearray((newest / "optimizer.pt").read_bytes())
    blob[len(blob) // 2] ^= 0xFF
    (newest / "optimizer.pt").write_bytes(bytes(blob))
    (tmp_path / "checkpoints" / ".step-8.abc.tmp").mkdir()  # a write cut short by kill -9
    path, problems = newest_valid(tmp_path / "checkpoints")
    assert path.name == "step-4" and "optimizer.pt does not match its checksum" in problems[0]

    with pytest.raises(UserError, match="different config"):
        run(tmp_path, make_model(), data, None, config(max_steps=6, save_steps=2), resume=True,
            config_hash="c4a19ed")
    with pytest.raises(UserError, match="already holds checkpoints"):
        run(tmp_path, make_model(), data, None, config(max_steps=6, save_steps=2))
    capsys.readouterr()
    summary = run(tmp_path, make_model(), data, None, config(max_steps=6, save_steps=2),
                  resume=True)
    assert "step-6 is unusable" in capsys.readouterr().err
    assert summary["steps"] == 6
    assert [m["step"] for m in _metrics(tmp_path) if "loss" in m and "event" not in m] == \
        [1, 2, 3, 4, 5, 6]  # the log reads as one run


def _oom_above(rows: int):
    """A real forward pre-hook raising torch's OutOfMemoryError for micro-batches over ``rows``."""
    def hook(module, args, kwargs):
        if kwargs["input_ids"].shape[0] > rows:
            raise torch.OutOfMemoryError("injected: CUDA out of memory")
    return hook


def test_out_of_memory_advises_or_auto_batch_retries_with_the_same_effective_batch(
        tmp_path: Path) -> None:
    data = make_data(16, lengths=(3, 48))
    settings = dict(micro_batch_size=4, gradient_accumulation_steps=1, max_steps=3,
                    save_steps=100)
    model = make_model()
    model.register_forward_pre_hook(_oom_above(1), with_kwargs=True)
    with pytest.raises(RuntimeError, match="out of memory at step 1 .*gradient_checkpointing"):
        run(tmp_path / "plain", model, data, None, config(**settings))

    model = make_model()
    model.register_forward_pre_hook(_oom_above(1), with_kwargs=True)
    run(tmp_path / "auto", model, data, None, config(**settings, auto_batch=True))
    events = [m for m in _metrics(tmp_path / "auto") if m.get("event") == "auto_batch"]
    assert [(e["micro_batch_size"], e["gradient_accumulation_steps"]) for e in events] == \
        [(2, 2), (1, 4)]
    run(tmp_path / "direct", make_model(), data, None,
        config(**{**settings, "micro_batch_size": 1, "gradient_accumulation_steps": 4}))
    auto, direct = adapter_weights(tmp_path / "auto"), adapter_weights(tmp_path / "direct")
    for key in direct:
        torch.testing.assert_close(auto[key], direct[key], rtol=0, atol=1e-6)


def test_a_damaged_best_checkpoint_is_never_published(tmp_path: Path) -> None:
    """adapter/ is copied from the best checkpoint: one flipped byte there and training
    refuses to publish it, naming the file, instead of merging and exporting it."""
    import shutil

    out = tmp_path / "run"
    cfg = config(epochs=3, eval_steps=2, save_steps=2, learning_rate=5e-3)
    summary = run(out, make_model(), make_data(24), make_data(6, seed=1), cfg)
    best = summary["best_step"]
    assert best < summary["steps"]  # the best is not the newest checkpoint
    weights = out / "checkpoints" / f"step-{best}" / "adapter" / "adapter_model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-7] ^= 0x04
    weights.write_bytes(bytes(data))
    shutil.rmtree(out / "adapter")
    with pytest.raises(UserError, match=rf"step-{best}/adapter/adapter_model\.safetensors does "
                                        "not match its checksum"):
        run(out, make_model(), make_data(24), make_data(6, seed=1), cfg, resume=True)
    assert not (out / "adapter").exists()


@pytest.mark.parametrize(("eval_steps", "expected"), [
    ("auto", [2, 4, 6, 8, 10, 12, 14, 16, 18, 20]), (None, [20]), (7, [7, 14, 20])])
def test_evaluation_by_default_every_tenth_of_the_steps_and_at_the_end(
        tmp_path: Path, eval_steps: str | int | None, expected: list[int]) -> None:
    cfg = config(max_steps=20, gradient_accumulation_steps=1, save_steps=100, logging_steps=5,
                 eval_steps=eval_steps)
    assert TrainConfig(max_steps=20).eval_steps == "auto"  # the default
    run(tmp_path, make_model(), make_data(16), make_data(2, seed=3), cfg)
    assert [m["step"] for m in _metrics(tmp_path) if "eval_loss" in m] == expected


def _spiking_model(spike_calls: set[int]):  # noqa: ANN202
    """A model whose logits are blown up on the given forward calls: a finite loss spike."""
    model = make_model()
    calls = [0]

    def blow_up(module, inputs, output):  # a real forward hook on the output layer
        calls[0] += 1
        return output * 60.0 if calls[0] in spike_calls else output

    model.base_model.model.lm_head.register_forward_hook(blow_up)
    return model


SPIKY = dict(micro_batch_size=2, gradient_accumulation_steps=1, max_steps=14, save_steps=1,
             save_total_limit=20, lr_scheduler="constant", warmup_steps=0, max_grad_norm=None)


@pytest.mark.parametrize("policy", ["skip", "warn", "rollback"])
def test_a_finite_loss_spike_is_caught_and_handled_by_policy(tmp_path: Path, policy: str) -> None:
    cfg = config(**SPIKY, spikes={"policy": policy, "window": 8})
    summary = run(tmp_path, _spiking_model({12}), make_data(32), None, cfg)
    events = [m for m in _metrics(tmp_path) if m.get("event") in ("spike", "rollback")]
    assert events[0]["event"] == "spike" and events[0]["step"] == 12
    assert events[0]["action"] == policy and "recent median" in events[0]["reason"]
    assert summary["spikes"] == 1 and summary["steps"] == 14

    def weights(step: int) -> dict[str, torch.Tensor]:
        return load_file(str(tmp_path / "checkpoints" / f"step-{step}" / "adapter"
                             / "adapter_model.safetensors"))

    changed = any(not torch.equal(weights(11)[k], v) for k, v in weights(12).items())
    if policy == "skip":
        assert not changed  # the spike's update was never applied
        assert len(events) == 1
    elif policy == "warn":
        assert changed
    else:
        assert [e["event"] for e in events] == ["spike", "rollback"]
        assert events[1]["checkpoint"] == "step-11" and summary["rollbacks"] == 1


def test_no_spike_is_seen_in_normal_training(tmp_path: Path) -> None:
    summary = run(tmp_path, make_model(), make_data(32), None,
                  config(**{**SPIKY, "save_steps": 100}))
    assert summary["spikes"] == 0


def _fake_memory(fractions):  # noqa: ANN001, ANN202 - call number → fraction of RAM
    from lorapipe.model.memory import device_capacity

    total, calls = device_capacity("cpu")["total_bytes"], [0]

    def memory() -> dict[str, int]:
        calls[0] += 1
        used = int(fractions(calls[0]) * total)
        return {"rss_bytes": used, "peak_rss_bytes": used}

    return memory


def test_memory_pressure_is_reported_once_per_level_with_advice(tmp_path: Path) -> None:
    readings = [0.5, 0.85, 0.86, 0.93, 0.97, 0.97, 0.98]
    memory = _fake_memory(lambda n: readings[min(n, len(readings)) - 1])
    cfg = config(micro_batch_size=4, gradient_accumulation_steps=1, max_steps=8,
                 save_steps=100)
    run(tmp_path, make_model(), make_data(40), None, cfg, memory=memory)
    events = [m for m in _metrics(tmp_path) if m.get("event") == "memory_pressure"]
    assert [(e["step"], e["level"]) for e in events] == [(2, 0.8), (4, 0.9), (5, 0.95)]
    assert events[1]["fraction"] == pytest.approx(0.93, abs=1e-3)
    assert "train.micro_batch_size (now 4)" in events[0]["suggestion"]


def test_auto_batch_retries_a_step_that_reaches_95_percent_at_half_the_micro_batch(
        tmp_path: Path) -> None:
    """With auto_batch the memory is read after each micro batch; at 95% the step is
    abandoned before its update and retried split finer: the same losses as a run that
    never came near the limit."""
    cfg = config(micro_batch_size=4, gradient_accumulation_steps=1, max_steps=6,
                 save_steps=100, auto_batch=True)
    # calls: per step one after its micro batch, one for its log line; the 5th is step 3's
    run(tmp_path / "pressed", make_model(), make_data(40), None, cfg,
        memory=_fake_memory(lambda n: 0.97 if n == 5 else 0.5))
    run(tmp_path / "calm", make_model(), make_data(40), None, cfg,
        memory=_fake_memory(lambda n: 0.5))
    events = [m for m in _metrics(tmp_path / "pressed")
              if m.get("event") in ("memory_pressure", "auto_batch")]
    assert [(e["event"], e["step"]) for e in events] == [("memory_pressure", 3),
                                                         ("auto_batch", 3)]
    assert events[0]["action"] == "retry at half the micro batch"
    assert events[1]["micro_batch_size"] == 2 and events[1]["gradient_accumulation_steps"] == 2

    def losses(out: Path) -> list[float]:
        return [m["loss"] for m in _metrics(out) if "loss" in m and "event" not in m]

    assert len(losses(tmp_path / "pressed")) == 6
    assert losses(tmp_path / "pressed") == pytest.approx(losses(tmp_path / "calm"), rel=1e-5)
