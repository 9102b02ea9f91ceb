"""The training objective is a component: ``train.objective`` picks one by name, the loop
backpropagates its loss and logs its metrics, and the built-in ``sft`` is today's loss."""

from __future__ import annotations

import dataclasses
import inspect
import json
import types
from pathlib import Path
from typing import Any

import pytest
import torch
from tinyrun import PAD, adapter_weights, config, make_data, make_model, run

from lorapipe.cli import main
from lorapipe.config import TrainConfig, validate_config
from lorapipe.errors import ConfigError
from lorapipe.plan import build_objective, build_plan
from lorapipe.plugin import Objective, ObjectiveLoss, Options, hookimpl, loss_sum, trainable_tokens
from lorapipe.plugin_manager import build_plugin_manager
from lorapipe.registry import Registry
from lorapipe.train.batching import collate, load_examples
from lorapipe.train.checkpoint import TrainState, read_state
from lorapipe.train.metrics import LogWindow, StepResult

SAMPLE = Path(__file__).resolve().parents[2] / "configs" / "data" / "quickstart.jsonl"


class ScaledOptions(Options):
    factor: float = 1.0


class ScaledObjective(Objective):
    """A third party's objective: sft's loss times ``factor``, which it reports as a metric."""

    name = "scaled"
    Options = ScaledOptions
    metrics = ("factor",)

    def count(self, batch: dict[str, torch.Tensor]) -> int:
        return trainable_tokens(batch)

    def loss(self, model: torch.nn.Module, batch: dict[str, torch.Tensor], *,
             fused: Any = None) -> ObjectiveLoss:
        factor = self.options.factor
        return ObjectiveLoss(loss_sum(model, batch) * factor,
                             {"factor": factor * self.count(batch)})


def _registry_with_scaled() -> Registry:
    """The installed plugins plus a throw-away one registering ``scaled``."""
    module = types.ModuleType("scaled_plugin")

    @hookimpl
    def lorapipe_register_objectives(register):  # noqa: ANN001, ANN202
        register(ScaledObjective)

    module.lorapipe_register_objectives = lorapipe_register_objectives
    pm = build_plugin_manager()
    pm.register(module, name="scaled_plugin")
    return Registry(pm)


def _steps(out: Path) -> list[dict[str, Any]]:
    return [m for m in map(json.loads, (out / "metrics.jsonl").read_text().splitlines())
            if "loss" in m and "event" not in m]


def _evals(out: Path) -> list[dict[str, Any]]:
    return [m for m in map(json.loads, (out / "metrics.jsonl").read_text().splitlines())
            if "eval_loss" in m]


def test_a_plugin_objective_is_picked_by_name_and_its_loss_is_what_trains(
        tmp_path: Path) -> None:
    registry = _registry_with_scaled()
    settings = dict(max_steps=2, eval_steps=2, save_steps=100)
    outs = {}
    for factor in (None, 2.0, 0.0):  # None: the default, sft
        raw = {"model": {"name_or_path": "tiny-llama"},
               "data": {"loader": {"name": "jsonl", "path": str(SAMPLE)}},
               "train": {**config(**settings).model_dump(exclude={"objective"}),
                         **({"objective": {"name": "scaled", "factor": factor}}
                            if factor is not None else {})},
               "output_dir": str(tmp_path / "unused")}
        plan = build_plan(validate_config(raw), registry)
        assert plan.objective.name == ("sft" if factor is None else "scaled")
        assert plan.objective.field == "train.objective"
        out = outs[factor] = tmp_path / str(factor)
        run(out, make_model(), make_data(24), make_data(6, seed=1), plan.config.train,
            objective=plan.objective)

    sft, doubled, zero = (_steps(outs[f]) for f in (None, 2.0, 0.0))
    # the first step starts from the same weights: the loss logged is the objective's
    assert doubled[0]["loss"] == pytest.approx(2 * sft[0]["loss"], rel=1e-6)
    assert doubled[0]["grad_norm"] == pytest.approx(2 * sft[0]["grad_norm"], rel=1e-5)
    assert [m["factor"] for m in doubled] == pytest.approx([2.0, 2.0])  # a mean per token
    assert "factor" not in sft[0]
    evaluated, evaluated_sft = _evals(outs[2.0])[0], _evals(outs[None])[0]
    assert evaluated["eval_factor"] == pytest.approx(2.0)
    assert evaluated["eval_loss"] == pytest.approx(2 * evaluated_sft["eval_loss"], rel=1e-6)
    # a zero loss has zero gradients: the adapter never leaves its initialisation (B = 0)
    assert [m["loss"] for m in zero] == [0.0, 0.0]
    b = {k: v for k, v in adapter_weights(outs[0.0]).items() if "lora_B" in k}
    assert b and all(not v.any() for v in b.values())
    assert any(v.any() for k, v in adapter_weights(outs[None]).items() if "lora_B" in k)


def test_a_wrong_objective_name_or_option_names_its_field(
        repo_root: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.chdir(repo_root)
    assert main(["validate", "configs/quickstart.yaml", "--set", "train.objective.name=sft",
                 "--set", "train.objective.x=1"]) == 2
    assert capsys.readouterr().err.startswith(
        "error: train.objective.x: unknown option for objective 'sft'")
    assert main(["validate", "configs/quickstart.yaml", "--set", "train.objective=ppo"]) == 2
    assert capsys.readouterr().err.startswith(
        "error: train.objective.name: unknown objective 'ppo'. Available: dpo, kto, orpo, "
        "sft, simpo.")
    assert main(["validate", "configs/quickstart.yaml"]) == 0
    assert "train.objective: objective 'sft'" in capsys.readouterr().out
    assert main(["components", "objectives"]) == 0
    assert "  sft " in capsys.readouterr().out


def test_an_evaluator_of_pairs_beside_kto_is_refused_at_validate(
        repo_root: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    """kto trains on unpaired replies only, so the held-out data can hold no pair for the
    `preference` evaluator: validate says so, not the evaluate stage after training."""
    monkeypatch.chdir(repo_root)
    sets = ["--set", "model.name_or_path=tiny-llama", "--set", "train.objective=kto"]
    assert main(["validate", "configs/dpo.yaml", *sets]) == 2
    assert capsys.readouterr().err.startswith(
        "error: evaluate.evaluators.0: evaluator 'preference' scores preference records, "
        "but train.objective 'kto' trains on unpaired records only")
    assert main(["validate", "configs/dpo.yaml", *sets,
                 "--set", "evaluate.evaluators=[{name: perplexity}]"]) == 0
    assert main(["validate", "configs/dpo.yaml", "--set", "model.name_or_path=tiny-llama",
                 "--set", "train.objective=sft"]) == 0  # sft trains a pair's chosen side


def test_the_objective_contract_is_abstract() -> None:
    assert inspect.isabstract(Objective)
    assert Objective.__abstractmethods__ == {"count", "loss"}


@pytest.mark.parametrize("packed", [False, True])
def test_sft_is_exactly_the_loss_before_objectives(packed: bool) -> None:
    """The built-in objective's loss, count and gradients are bit for bit those of
    ``loss_sum`` and ``trainable_tokens``, which the loop used directly before."""
    sft = build_objective(TrainConfig())
    assert sft.name == "sft" and sft.columns == ("input_ids", "labels") and sft.metrics == ()
    examples = load_examples(make_data(4, seed=3))
    batch = collate([examples] if packed else [[e] for e in examples], PAD)
    results = []
    for compute in (lambda m: sft.loss(m, batch), lambda m: ObjectiveLoss(loss_sum(m, batch))):
        model = make_model()
        out = compute(model)
        out.total.backward()
        results.append((out, [p.grad for p in model.parameters() if p.requires_grad]))
    (ours, our_grads), (before, grads_before) = results
    assert ours.metrics == {} and torch.equal(ours.total, before.total)
    assert all(torch.equal(a, b) for a, b in zip(our_grads, grads_before, strict=True))
    assert sft.count(batch) == trainable_tokens(batch)


def test_data_without_the_objectives_columns_is_refused_naming_it(tmp_path: Path) -> None:
    data = make_data(8).remove_columns(["labels"])
    with pytest.raises(ConfigError) as err:
        run(tmp_path, make_model(), data, None, config(max_steps=1))
    assert err.value.field == "train.objective"
    assert "reads the columns labels, which the prepared train data lacks" in str(err.value)


def test_an_objectives_metrics_survive_a_checkpoint_of_the_open_log_window(
        tmp_path: Path) -> None:
    """A resumed run's first metrics line averages its objective's metrics over the same
    steps as the uninterrupted run's: the open window's sums are part of state.json."""
    def step(tokens: int, factor: float) -> StepResult:
        return StepResult(loss=1.0, grad_norm=1.0, lr=1e-3, applied=True, units=tokens,
                          trainable_tokens=tokens, real_tokens=tokens, batch_tokens=tokens,
                          metrics={"factor": factor})

    window = LogWindow()
    window.add(step(3, 2.0))
    path = tmp_path / "state.json"
    path.write_text(json.dumps(dataclasses.asdict(TrainState(step=1, unlogged=window.sums()))))
    resumed = LogWindow.resumed(read_state(path).unlogged)
    resumed.add(step(1, 6.0))
    record = resumed.record(step=2, epoch=0.0, last=step(1, 6.0), memory={})
    assert record["factor"] == pytest.approx((2.0 * 3 + 6.0 * 1) / 4)
