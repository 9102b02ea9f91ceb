"""Evaluation during training: the validation loss, when it is measured, and what it decides
(the best step, whose checkpoint becomes adapter/, and early stopping).

The evaluators of the ``evaluate`` stage judge the finished adapter; this is the loop's
own yardstick, the training objective's loss as a mean over its units (tokens for ``sft``),
cheap enough to measure about every 10% of a run.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import torch

from lorapipe.config import EarlyStoppingConfig, TrainConfig
from lorapipe.train.batching import Example, Pair, collate, example_length, load_examples
from lorapipe.train.checkpoint import TrainState
from lorapipe.train.distributed import sum_over

if TYPE_CHECKING:
    from accelerate import Accelerator

    from lorapipe.objective import Objective
    from lorapipe.train.accumulation import Accumulation


class Evaluation:
    """The validation set, the steps it is evaluated at, and what each evaluation decides.

    ``batches`` gives the micro batch size in effect (auto_batch may have lowered it) and
    the pad id; ``objective`` the loss; ``log`` writes a metrics.jsonl record (the main
    process's).
    """

    def __init__(self, validation_data, config: TrainConfig, total_steps: int, *,  # noqa: ANN001
                 accelerator: Accelerator, batches: Accumulation, objective: Objective,
                 log: Callable[[dict[str, Any]], None]) -> None:
        self.examples = (load_examples(validation_data, layout=batches.layout)
                         if validation_data else [])
        # "auto": about every 10% of the steps; None: the last step only
        self.every = (max(1, round(total_steps / 10)) if config.eval_steps == "auto"
                      else config.eval_steps)
        self.rule = config.early_stopping
        self.accelerator, self.batches, self.log = accelerator, batches, log
        self.objective = objective
        # read before ``prepare``: on the CPU, where FSDP is installed after the fact,
        # the accelerator no longer reports it afterwards
        self.sharded = accelerator.is_fsdp2

    def due(self, step: int, last: bool) -> bool:
        return bool(self.examples) and bool(last or (self.every and step % self.every == 0))

    def __call__(self, model: torch.nn.Module, state: TrainState, *,
                 epoch: float) -> tuple[bool, bool]:
        """Evaluate, record it in ``state`` and log it; return (improved on the best,
        patience exhausted)."""
        eval_loss, metrics = validation_loss(self.accelerator, model, self.examples,
                                             self.objective, sharded=self.sharded,
                                             micro_batch_size=self.batches.micro_batch_size,
                                             pad_token_id=self.batches.pad,
                                             collate=self.batches.collate)
        improved, stop = judge(state, eval_loss, self.rule)
        self.log({"step": state.step, "epoch": epoch, "eval_loss": eval_loss,
                  **{f"eval_{name}": value for name, value in metrics.items()},
                  "best_eval_loss": state.best_eval_loss})
        if stop:
            self.log({"step": state.step, "event": "early_stop",
                      "best_step": state.best_step, "patience": self.rule.patience})
        return improved, stop


@torch.no_grad()
def validation_loss(accelerator: Accelerator, model: torch.nn.Module,
                    examples: list[Example] | list[Pair], objective: Objective, *,
                    sharded: bool, micro_batch_size: int, pad_token_id: int,
                    collate: Callable[[list, int], dict[str, torch.Tensor]] = collate,
                    ) -> tuple[float, dict[str, float]]:
    """The objective's loss and metrics on the validation set, as means over its units
    (tokens for ``sft``), sharded over processes.

    Runs on the unwrapped model: DDP's forward syncs buffers, which would hang when
    the shards give the processes different numbers of batches.
    """
    model = accelerator.unwrap_model(model)
    model.eval()
    rank, world = accelerator.process_index, accelerator.num_processes
    order = sorted(range(len(examples)), key=lambda i: example_length(examples[i]))
    mine = order[rank::world]
    size = micro_batch_size
    shards: list[list[int] | None] = [mine[s:s + size] for s in range(0, len(mine), size)]
    if sharded:  # every forward gathers weights from all: each runs the first's count
        shards += [None] * (math.ceil(len(order[::world]) / size) - len(shards))
    total, count, sums = 0.0, 0, dict.fromkeys(objective.metrics, 0.0)
    for indices in shards:
        batch = collate([[examples[i]] for i in indices or order[:1]], pad_token_id)
        batch = {k: v.to(accelerator.device) for k, v in batch.items()}
        with accelerator.autocast():
            loss = objective.loss(model, batch)
        if indices is not None:  # a filler forward only keeps the others company
            total, count = total + loss.total.item(), count + objective.count(batch)
            for name in sums:
                sums[name] += float(loss.metrics[name])
    model.train()
    total, count, *metrics = sum_over(accelerator, total, count, *sums.values())
    units = max(count, 1)
    return total / units, {name: value / units for name, value in zip(sums, metrics, strict=True)}


def judge(state: TrainState, eval_loss: float,
          rule: EarlyStoppingConfig | None) -> tuple[bool, bool]:
    """Record an evaluation in ``state``; return (improved on the best, patience exhausted).

    A non-finite loss never improves, so it can never choose the published adapter.
    """
    min_delta = rule.min_delta if rule else 0.0
    best = state.best_eval_loss
    improved = math.isfinite(eval_loss) and (best is None or eval_loss < best - min_delta)
    if improved:
        state.best_eval_loss, state.best_step = eval_loss, state.step
        state.evals_without_improvement = 0
    else:
        state.evals_without_improvement += 1
    return improved, rule is not None and state.evals_without_improvement >= rule.patience
