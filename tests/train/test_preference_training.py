"""Preference objectives in the loop, on NF4 tiny-llama as QLoRA users run them: the
step's gradient is the mean over its pairs however the step is split, a resumed run ends
on the identical adapter, and the step's metrics reach metrics.jsonl."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest
import torch
from datasets import Dataset
from tinyrun import adapter_weights, config, make_data, make_model, make_pairs, make_rated, run

from lorapipe.config import TrainConfig
from lorapipe.errors import ConfigError, UserError
from lorapipe.plan import build_objective


def _steps(out: Path) -> list[dict[str, Any]]:
    lines = (out / "metrics.jsonl").read_text().splitlines()
    return [r for r in map(json.loads, lines) if "loss" in r and "event" not in r]


# kto is left out by design, TRL's too: its KL estimate is each micro batch's mean
@pytest.mark.parametrize("objective", ["dpo", "simpo", "orpo"])
def test_accumulation_is_exact_over_pairs_with_nf4(objective: str, tmp_path: Path) -> None:
    data = make_pairs(16)
    results = {}
    for micro, accum in ((4, 1), (1, 4)):
        out = tmp_path / f"{micro}x{accum}"
        cfg = config(micro_batch_size=micro, gradient_accumulation_steps=accum, max_steps=4,
                     save_steps=100, objective={"name": objective})
        run(out, make_model(nf4=True), data, None, cfg)
        results[(micro, accum)] = adapter_weights(out), [s["loss"] for s in _steps(out)]
    (a, loss_a), (b, loss_b) = results.values()
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=1e-5)
    assert loss_a == pytest.approx(loss_b, rel=1e-5)
    assert any(v.abs().sum() > 0 for k, v in a.items() if "lora_B" in k)


METRICS = {"dpo": "reward_accuracy", "simpo": "reward_accuracy", "orpo": "reward_accuracy",
           "kto": "kl"}


@pytest.mark.parametrize("objective", list(METRICS))
def test_a_resumed_run_ends_on_the_identical_adapter_with_nf4(objective: str,
                                                             tmp_path: Path) -> None:
    make = make_rated if objective == "kto" else make_pairs
    data, validation = make(24), make(4, seed=1)
    cfg = config(max_steps=8, save_steps=4, eval_steps=4, objective={"name": objective})
    straight = tmp_path / "straight"
    run(straight, make_model(nf4=True), data, validation, cfg)
    resumed = tmp_path / "resumed"
    shutil.copytree(straight, resumed)
    for later in ("step-8",):  # as if stopped right after step 4's checkpoint
        shutil.rmtree(resumed / "checkpoints" / later)
    shutil.rmtree(resumed / "adapter")
    run(resumed, make_model(nf4=True), data, validation, cfg, resume=True)
    a, b = adapter_weights(straight), adapter_weights(resumed)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    steps = _steps(straight)
    assert METRICS[objective] in steps[-1]
    # the loss is a mean over pairs (or rated replies); tokens are still counted as tokens
    assert steps[-1]["trainable_tokens"] > 2 * cfg.micro_batch_size * 2
    evals = [json.loads(line) for line in (straight / "metrics.jsonl").read_text().splitlines()
             if "eval_loss" in line]
    assert evals and f"eval_{METRICS[objective]}" in evals[-1]


def test_sft_data_or_packing_is_refused_for_a_preference_objective(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="rejected_input_ids"):
        run(tmp_path / "a", make_model(), make_data(8), None, config(objective={"name": "dpo"}))
    with pytest.raises(ConfigError, match="train.packing"):
        run(tmp_path / "b", make_model(), make_pairs(8), None,
            config(objective={"name": "dpo"}, packing=True))
    mixed = make_pairs(8).to_dict()
    mixed["rejected_input_ids"][3], mixed["rejected_labels"][3] = [], []
    with pytest.raises(UserError, match="1 of 8 prepared samples are not preference pairs"):
        run(tmp_path / "c", make_model(), Dataset.from_dict(mixed), None,
            config(objective={"name": "dpo"}))


def test_label_smoothing_needs_the_sigmoid_loss() -> None:
    from lorapipe.config import TrainConfig

    with pytest.raises(ConfigError, match="label_smoothing"):
        build_objective(TrainConfig.model_validate(
            {"objective": {"name": "dpo", "loss_type": "ipo", "label_smoothing": 0.1}}))


@pytest.mark.parametrize("objective", ["dpo", "kto"])
def test_a_precomputed_reference_trains_the_same_adapter_without_reference_forwards(
        objective: str, tmp_path: Path) -> None:
    """precompute_reference: the base's log-probabilities (for kto also of the KL rows,
    whose partners are fixed) come from one pass at the start (then from the run's
    reference/ cache), and each micro batch runs one reference forward fewer."""
    from lorapipe.artifacts import RunPaths

    make = make_pairs if objective == "dpo" else make_rated
    data, validation = make(16), make(4, seed=1)
    results, forwards = {}, {}
    for precompute in (False, True):
        out = tmp_path / str(precompute)
        paths = RunPaths(out)
        paths.data.mkdir(parents=True)
        paths.data_report.write_text(json.dumps({"fingerprint": "f" * 64}))
        model = make_model(nf4=True)
        calls: list[int] = []
        model.base_model.model.model.register_forward_hook(
            lambda *_, calls=calls: calls.append(1))
        cfg = config(max_steps=8, save_steps=100, eval_steps=None, objective={
            "name": objective, "precompute_reference": precompute})
        run(out, model, data, validation, cfg,
            run_config={"model": {"name_or_path": "tiny-llama"}})
        results[precompute], forwards[precompute] = adapter_weights(out), len(calls)
    for key, value in results[False].items():
        torch.testing.assert_close(results[True][key], value, rtol=0, atol=1e-5)
    # 8 steps (two epochs) × 2 micro batches: one reference forward fewer each, after one
    # pass over the 16 examples in micro batches of 2 (evaluations alike in both)
    assert forwards[False] - forwards[True] == 8 * 2 - 16 // 2
    [cached] = (tmp_path / "True" / "reference").iterdir()
    from safetensors.torch import load_file

    assert load_file(str(cached))["reference"].shape == (16, 2)


def test_the_reference_cache_key_changes_with_the_base_and_the_data(tmp_path: Path) -> None:
    import os

    from lorapipe.artifacts import RunPaths
    from lorapipe.train.reference_cache import _path

    objective = build_objective(TrainConfig.model_validate({"objective": {"name": "dpo"}}))
    paths = RunPaths(tmp_path / "run")
    paths.data.mkdir(parents=True)
    base = tmp_path / "base"
    base.mkdir()
    (base / "model.safetensors").write_bytes(b"weights")
    model = {"name_or_path": str(base), "dtype": "auto"}

    def key(data: str = "a" * 64, **changes: Any) -> Path:
        paths.data_report.write_text(json.dumps({"fingerprint": data}))
        return _path(objective, paths, {"model": {**model, **changes}})

    first = key()
    assert key() == first
    assert key(dtype="bf16") != first and key(data="b" * 64) != first
    os.utime(base / "model.safetensors", ns=(1, 1))  # the base's weights rewritten
    assert key() != first
