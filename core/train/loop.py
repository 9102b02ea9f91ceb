"""The training loop: one optimizer step at a time, with the state it saves spelled out.

``Trainer.run`` reads top to bottom: take one optimizer step (``Trainer.step``, which
returns a ``StepResult``), count it in the state, handle a skipped non-finite update
(rolling back after a streak), log, evaluate / stop early, checkpoint, stop on a signal.
``TrainState`` (checkpoint.py) plus the config is everything the loop needs to continue
exactly where it left off, the learning rate included (schedule.py).

What the loop hands off: the loss of a micro batch (the run's ``Objective``, ``sft`` unless
``train.objective`` names another), the micro batches of a step and auto_batch's finer split
(accumulation.py), the validation loss and early stopping (evaluation.py), the checkpoint
a run continues from (resume.py), the summary and adapter/ at the end (publish.py).
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import torch
from accelerate.utils import set_seed
from tqdm.auto import tqdm

from lorapipe.artifacts import RunPaths
from lorapipe.config import TrainConfig
from lorapipe.model.memory import memory_snapshot
from lorapipe.plan import build_objective
from lorapipe.train.accumulation import Accumulation
from lorapipe.train.batching import layout_for
from lorapipe.train.checkpoint import TrainState
from lorapipe.train.distributed import make_accelerator, placement, sum_over
from lorapipe.train.evaluation import Evaluation
from lorapipe.train.guard import NonFiniteGuard, SpikeGuard
from lorapipe.train.interrupt import TrainingInterrupted, stop_on_signals
from lorapipe.train.loss import backward_scale, trainable_tokens
from lorapipe.train.memory_watch import MemoryPressure, MemoryWatch
from lorapipe.train.metrics import LogWindow, StepResult, open_log
from lorapipe.train.optim import build_optimizer
from lorapipe.train.publish import closing_line, publish_adapter, run_summary
from lorapipe.train.reference_cache import reference_values
from lorapipe.train.resume import Checkpoints, resume_point
from lorapipe.train.schedule import LearningRateSchedule

if TYPE_CHECKING:
    from datasets import Dataset

    from lorapipe.objective import Objective


@dataclasses.dataclass(frozen=True)
class TrainSetup:
    """Everything ``train`` needs besides the model and the data, spelled out once
    (stage.py fills it from the run's context)."""

    config: TrainConfig
    paths: RunPaths  # writes checkpoints/, metrics.jsonl and, at the end, the best adapter/
    pad_token_id: int
    max_length: int  # data.max_length: the length of a packed row
    config_hash: str  # written to every checkpoint; a resume under another is refused
    resume: bool = False  # continue from the newest valid checkpoint
    allow_config_change: bool = False  # resume even when the config hash differs
    # the snapshot logged with each step (default: the model stage's)
    memory: Callable[[], dict] = memory_snapshot
    # the resolved pipeline config: what train.report_to trackers record as hyperparameters
    run_config: dict[str, Any] | None = None
    # the plan's train.objective; None builds config.objective from the registry
    objective: Objective | None = None


def train(model: torch.nn.Module, train_data, validation_data,  # noqa: ANN001 - Datasets
          setup: TrainSetup) -> dict[str, Any]:
    """Train the trainable parameters of ``model`` (a PeftModel); return the run's summary.

    ``validation_data`` may be None (then the final adapter is kept).
    """
    return Trainer(model, train_data, validation_data, setup).run()


class Trainer:
    """One training run: the prepared model, optimizer and data order, and its ``TrainState``."""

    def __init__(self, model, train_data, validation_data, setup: TrainSetup) -> None:  # noqa: ANN001
        config = self.config = setup.config
        self.setup, self.paths, self.memory = setup, setup.paths, setup.memory
        self.objective = (setup.objective if setup.objective is not None
                          else build_objective(config))
        _check_columns(self.objective, train=train_data, validation=validation_data)
        self.accelerator = acc = make_accelerator(model)
        self.sharded = acc.is_fsdp2  # before prepare: on the CPU it is not reported after
        self.world, self.rank = acc.num_processes, acc.process_index
        self.batches = Accumulation(train_data, config, max_length=setup.max_length,
                                    pad_token_id=setup.pad_token_id, world=self.world,
                                    rank=self.rank,
                                    layout=layout_for(self.objective.columns))
        self.steps_per_epoch = self.batches.steps_per_epoch
        self.total_steps = config.max_steps or math.ceil(config.epochs * self.steps_per_epoch)
        self.evaluation = Evaluation(validation_data, config, self.total_steps,
                                     accelerator=acc, batches=self.batches,
                                     objective=self.objective, log=self._log)
        optimizer = build_optimizer(model, config)
        self.schedule = LearningRateSchedule(optimizer, config, self.total_steps)
        self.model, self.optimizer = acc.prepare(model, optimizer)
        self.params = [p for p in self.model.parameters() if p.requires_grad]
        if self.objective.precomputes:  # once, instead of a reference forward every step
            self.batches.reference = reference_values(
                self.model, self.objective, self.batches, self.paths, setup.run_config,
                acc.device, main=acc.is_main_process)
        self.fused = None  # Liger's linear cross-entropy for the objective, where the head allows
        if config.kernels == "liger":
            from lorapipe.model.gpu_options import fused_cross_entropy

            self.fused = fused_cross_entropy(acc.unwrap_model(self.model).get_output_embeddings())
        self.guard = NonFiniteGuard(config.max_nonfinite_steps)
        self.spike_guard = SpikeGuard(config.spikes)
        self.memory_watch = MemoryWatch(acc, optimizer=self.optimizer, memory=self.memory,
                                        batches=self.batches, log=self._log)
        self.checkpoints = Checkpoints(self.paths, accelerator=acc, model=self.model,
                                       optimizer=self.optimizer, keep=config.save_total_limit,
                                       sharded=self.sharded)
        self.state = TrainState(config_hash=setup.config_hash, world_size=self.world)

    def run(self) -> dict[str, Any]:
        """Train to the last step, an early stop or a signal; return the run's summary."""
        self._start()
        cfg = self.config
        bar = tqdm(total=self.total_steps, initial=self.state.step, desc="train", unit="step",
                   disable=not self.accelerator.is_main_process)
        window = LogWindow.resumed(self.state.unlogged)
        started, run_tokens = time.perf_counter(), 0
        stopped_early = False
        self.model.train()
        with stop_on_signals() as stop:
            while self.state.step < self.total_steps and not stopped_early:
                try:
                    result = self.step()
                except (torch.OutOfMemoryError, MemoryPressure) as err:
                    # auto_batch; or explain what to change, and stop
                    self.memory_watch.split_finer(err, step=self.state.step + 1)
                    continue  # before the update: the same step again, split finer
                self._count(result)
                window.add(result)
                run_tokens += result.real_tokens
                if self._rolled_back(result):  # continue from the checkpoint, at half the lr
                    window, bar.n = LogWindow.resumed(self.state.unlogged), self.state.step
                    continue
                bar.update(1)
                step, last = self.state.step, self.state.step >= self.total_steps
                if step % cfg.logging_steps == 0 or last:
                    record = window.record(step=step, epoch=self._epoch(), last=result,
                                           memory=self.memory())
                    self._log(record)
                    bar.set_postfix(loss=f"{record['loss']:.4f}", lr=f"{record['lr']:.2e}",
                                    tok_s=f"{record['tokens_per_s']:.0f}")
                    window = LogWindow()
                    self.memory_watch.report(record["memory"], step=step)
                improved = False
                if self.evaluation.due(step, last):
                    improved, stopped_early = self.evaluation(self.model, self.state,
                                                              epoch=self._epoch())
                interrupted = bool(sum_over(self.accelerator, float(bool(stop)))[0])  # all stop
                due = step % cfg.save_steps == 0 or last or stopped_early or interrupted
                if due or improved:  # the best step always has a checkpoint to publish
                    self.state.unlogged = window.sums()
                    self.checkpoints.save(self.state)
                if interrupted:
                    bar.close()
                    raise self._interrupted(stop.signal_name or "signal")
        bar.close()
        return self._finish(time.perf_counter() - started, run_tokens, stopped_early)

    def step(self) -> StepResult:
        """One optimizer step on the next effective batch; the caller counts it (``_count``).

        Backpropagates every micro-batch's loss sum (the objective's) divided by the step's
        units (its ``count``) on all processes (loss.py), syncing gradients only on the
        last micro-batch; clips; sets the scheduled lr from the state; applies the update
        unless the loss or the gradient is non-finite. The gradients are cleared either way.
        """
        acc, state, objective = self.accelerator, self.state, self.objective
        batches, real = self.batches.next_step(state)
        step_count = int(sum_over(acc, sum(objective.count(b) for b in batches))[0])
        scale = backward_scale(step_count, self.world)
        total, sums = 0.0, dict.fromkeys(objective.metrics, 0.0)
        for i, batch in enumerate(batches):
            batch = {k: v.to(acc.device) for k, v in batch.items()}
            last = i == len(batches) - 1
            with contextlib.nullcontext() if last else acc.no_sync(self.model):
                with acc.autocast(), self._offloading():
                    micro = objective.loss(self.model, batch, fused=self.fused)
                acc.backward(micro.total * scale)
            total += micro.total.item()
            for name in sums:
                sums[name] += float(micro.metrics[name])
            self.memory_watch.check_pressure()  # auto_batch: may abandon the step
        padded = sum(b["input_ids"].numel() for b in batches)
        tokens = sum(trainable_tokens(b) for b in batches)
        total, real, padded, tokens, *metrics = sum_over(acc, total, real, padded, tokens,
                                                         *sums.values())
        loss = total / max(step_count, 1)
        grad_norm = float(acc.clip_grad_norm_(self.params, self.config.max_grad_norm or math.inf))
        applied = self.guard.record(loss, grad_norm)
        spike = self.spike_guard.check(state, loss, grad_norm) if applied else None
        if spike is not None and self.config.spikes.policy != "warn":
            applied = False
        lr = self.schedule.apply(self.optimizer, state.step, state.lr_scale)
        if applied:
            self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        return StepResult(loss=loss, grad_norm=grad_norm, lr=lr, applied=applied,
                          units=step_count, trainable_tokens=int(tokens), real_tokens=int(real),
                          batch_tokens=int(padded), spike=spike,
                          metrics={name: value / max(step_count, 1)
                                   for name, value in zip(sums, metrics, strict=True)})

    def _offloading(self) -> contextlib.AbstractContextManager:
        """train.activation_offload: the tensors the forward saves for backward (with
        gradient checkpointing, each block's input) wait in pinned CPU memory."""
        if not self.config.activation_offload:
            return contextlib.nullcontext()
        return torch.autograd.graph.save_on_cpu(pin_memory=True)

    def _count(self, result: StepResult) -> None:
        """Advance the state past a step; a skipped update still consumes its batch."""
        state = self.state
        state.step += 1
        state.step_in_epoch += 1
        state.trained_tokens += result.trainable_tokens
        if result.spike is not None:
            state.spikes += 1
        elif not result.applied:
            state.nonfinite_steps += 1

    def _rolled_back(self, result: StepResult) -> bool:
        """Report a spike or a skipped non-finite update; roll back if ``spikes.policy``
        or the guard's streak says so (then the caller continues from the restored state)."""
        step, policy = self.state.step, self.config.spikes.policy
        if result.spike is not None:
            self._log({"step": step, "event": "spike", "action": policy,
                       "reason": result.spike, "loss": result.loss,
                       "grad_norm": result.grad_norm})
            tqdm.write(f"step {step}: spike ({result.spike}): {policy}")
            back = policy == "rollback"
        elif not result.applied:
            self._log({"step": step, "event": "nonfinite_skip",
                       "loss": result.loss, "grad_norm": result.grad_norm})
            back = self.guard.must_roll_back
        else:
            return False
        if back:
            self.roll_back()
        return back

    def _epoch(self) -> float:
        """Epochs done, fractional: the ``epoch`` of metrics.jsonl's records."""
        return round(self.state.epoch + self.state.step_in_epoch / self.steps_per_epoch, 4)

    def roll_back(self) -> None:
        """Continue from the newest valid checkpoint at half the learning rate in effect
        (resume.Checkpoints.roll_back), the non-finite streak forgotten."""
        before = self.state
        self.state, path, problems = self.checkpoints.roll_back(before)
        self.guard.reset()
        lr = min(self.schedule.lrs(self.state.step, self.state.lr_scale))  # the next update's
        self._log({"step": self.state.step, "event": "rollback", "from_step": before.step,
                   "checkpoint": path.name, "lr": lr, "problems": problems})

    def _log(self, record: dict[str, Any]) -> None:
        if self.accelerator.is_main_process:
            self.metrics.write(record)
            if "event" in record:
                tqdm.write(f"step {record['step']}: {record['event']} {record}")

    # --- start and end ----------------------------------------------------------------

    def _start(self) -> None:
        """Continue from a checkpoint (resume.py) or from the seed; open metrics.jsonl."""
        setup = self.setup
        path = resume_point(self.paths.checkpoints, resume=setup.resume,
                            config_hash=setup.config_hash,
                            allow_config_change=setup.allow_config_change)
        if path is not None:
            self.state = self.checkpoints.restore(path)
            self.state.config_hash = setup.config_hash
            tqdm.write(f"resuming from {path} (step {self.state.step}/{self.total_steps})")
        self.metrics = None
        if self.accelerator.is_main_process:
            self.metrics = open_log(self.paths, self.config.report_to,
                                    resume_step=self.state.step if path is not None else None,
                                    tracker_ids=self.state.tracker_ids,
                                    run_config=setup.run_config)
        if self.world > 1:
            kind = "fsdp2" if self.sharded else "ddp"
            self._log({"step": self.state.step, "event": "processes",
                       **placement(self.accelerator.unwrap_model(self.model), kind, self.world)})
        if path is None:
            set_seed(self.config.seed)
            # step 0: a rollback target before the first scheduled checkpoint
            self.checkpoints.save(self.state)

    def _interrupted(self, signal_name: str) -> TrainingInterrupted:
        message = (f"{signal_name}: stopped after step {self.state.step}; checkpoint saved in "
                   f"{self.paths.checkpoint(self.state.step)}. Resume with: "
                   "lorapipe train CONFIG --resume (or lorapipe run CONFIG --resume)")
        if self.accelerator.is_main_process:
            tqdm.write(message)
            self.metrics.close()
        return TrainingInterrupted(message)

    def _finish(self, seconds: float, run_tokens: float, stopped_early: bool) -> dict[str, Any]:
        """Publish the best adapter (or the last, without validation) as ``adapter/``."""
        summary = run_summary(self.state, steps_per_epoch=self.steps_per_epoch,
                              seconds=seconds, run_tokens=run_tokens, stopped_early=stopped_early)
        if self.accelerator.is_main_process:
            publish_adapter(self.paths, summary)
            self.metrics.write({"step": self.state.step, "event": "end", "memory": self.memory()})
            self.metrics.close()
        self.accelerator.wait_for_everyone()
        if self.accelerator.is_main_process:
            tqdm.write(closing_line(summary, seconds))
        return summary


def _check_columns(objective: Objective, **splits: Dataset | None) -> None:
    """The prepared data must hold what the objective reads: a run prepared for another
    kind of training fails here, naming the objective, not at its first batch."""
    for split, data in splits.items():
        missing = [c for c in objective.columns if data is not None and c not in data.column_names]
        if missing:
            raise objective.config_error(
                f"objective '{objective.name}' reads the columns {', '.join(missing)}, which "
                f"the prepared {split} data lacks; prepare data for it (lorapipe prepare "
                "CONFIG) or pick another objective")
