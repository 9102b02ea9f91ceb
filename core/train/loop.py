"""The training loop: one optimizer step at a time, with the state it saves spelled out.

``Trainer.run`` reads top to bottom: take one optimizer step (``Trainer.step``, which
returns a ``StepResult``), count it in the state, handle a skipped non-finite update
(rolling back after a streak), log, evaluate / stop early, checkpoint, stop on a signal.
``TrainState`` (checkpoint.py) plus the config is everything the loop needs to continue
exactly where it left off, the learning rate included (schedule.py).
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import shutil
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from accelerate.utils import gather_object, set_seed
from tqdm.auto import tqdm

from lorapipe.artifacts import RunPaths
from lorapipe.atomic import atomic_directory
from lorapipe.cards import write_model_card
from lorapipe.config import TrainConfig
from lorapipe.errors import UserError
from lorapipe.manifest import require_intact, write_manifest
from lorapipe.train.batching import collate, epoch_steps, load_examples, pack
from lorapipe.train.checkpoint import (
    MAX_ROLLBACKS,
    TrainState,
    capture_rng,
    list_checkpoints,
    load_checkpoint,
    newest_valid,
    read_state,
    restore_rng,
    rotate,
    save_checkpoint,
)
from lorapipe.train.distributed import (
    make_accelerator,
    optimizer_state,
    placement,
    trainable_state,
)
from lorapipe.train.guard import NonFiniteGuard, SpikeGuard, assert_finite
from lorapipe.train.interrupt import TrainingInterrupted, stop_on_signals
from lorapipe.train.loss import backward_scale, loss_sum, trainable_tokens
from lorapipe.train.memory_watch import LEVELS, MemoryPressure, MemoryWatch
from lorapipe.train.metrics import MetricsLog
from lorapipe.train.optim import build_optimizer
from lorapipe.train.schedule import LearningRateSchedule
from lorapipe.train.trackers import Trackers


def train(model: torch.nn.Module, train_data, validation_data, *,  # noqa: ANN001 - Datasets
          config: TrainConfig, paths: RunPaths, pad_token_id: int, max_length: int,
          config_hash: str, resume: bool = False, allow_config_change: bool = False,
          memory: Callable[[], dict] | None = None,
          run_config: dict[str, Any] | None = None) -> dict[str, Any]:
    """Train the trainable parameters of ``model`` (a PeftModel); return the run's summary.

    Writes ``paths.checkpoints``, ``paths.metrics`` and, at the end, the best adapter to
    ``paths.adapter``. ``validation_data`` may be None (then the final adapter is kept).
    ``memory`` returns the snapshot logged with each step (default: the model stage's);
    ``run_config`` (the resolved pipeline config) is what ``train.report_to`` trackers
    record as the run's hyperparameters.
    """
    if memory is None:
        from lorapipe.model.memory import memory_snapshot as memory

    return Trainer(model, train_data, validation_data, config=config, paths=paths,
                   pad_token_id=pad_token_id, max_length=max_length, config_hash=config_hash,
                   memory=memory, run_config=run_config).run(
                       resume=resume, allow_config_change=allow_config_change)


@dataclasses.dataclass(frozen=True)
class StepResult:
    """What one optimizer step did, summed over all processes (the same on every one)."""

    loss: float  # mean over the step's trainable tokens
    grad_norm: float  # before clipping
    lr: float  # the update's lr; the lowest group's (LoRA+ B groups get a multiple)
    applied: bool  # False: the loss or gradient was non-finite and the update skipped
    trainable_tokens: int  # prediction targets: what the loss is averaged over
    real_tokens: int  # non-pad tokens: what throughput counts
    batch_tokens: int  # incl. padding: what the padding fraction compares with
    spike: str | None = None  # why this finite step counts as a spike (guard.SpikeGuard)


@dataclasses.dataclass
class LogWindow:
    """The steps since the last log line, summed; closed into one metrics.jsonl record."""

    started: float = dataclasses.field(default_factory=time.perf_counter)
    loss_sum: float = 0.0  # token-weighted, so the record's loss is the window's token mean
    trainable_tokens: int = 0
    real_tokens: int = 0
    batch_tokens: int = 0

    @classmethod
    def resumed(cls, sums: dict[str, float]) -> LogWindow:
        """The window a checkpoint was taken in, from ``sums()`` saved in its state."""
        return cls(**sums)

    def sums(self) -> dict[str, float]:
        """What a checkpoint keeps, so the first line after a resume covers the same steps
        and tokens as an uninterrupted run's (its wall time cannot be kept)."""
        return {"loss_sum": self.loss_sum, "trainable_tokens": self.trainable_tokens,
                "real_tokens": self.real_tokens, "batch_tokens": self.batch_tokens}

    def add(self, result: StepResult) -> None:
        self.loss_sum += result.loss * result.trainable_tokens
        self.trainable_tokens += result.trainable_tokens
        self.real_tokens += result.real_tokens
        self.batch_tokens += result.batch_tokens

    def record(self, *, step: int, epoch: float, last: StepResult,
               memory: dict[str, Any]) -> dict[str, Any]:
        """The metrics.jsonl line: window means and throughput, the last step's lr and norm."""
        seconds = time.perf_counter() - self.started
        return {
            "step": step,
            "epoch": epoch,
            "loss": self.loss_sum / max(self.trainable_tokens, 1),
            "lr": last.lr,
            "grad_norm": last.grad_norm,
            "trainable_tokens": self.trainable_tokens,
            "tokens_per_s": self.real_tokens / max(seconds, 1e-9),
            "seconds": round(seconds, 4),  # the window's wall time (since the resume, if any)
            "padding_fraction": 1 - self.real_tokens / max(self.batch_tokens, 1),
            "memory": memory,
        }


class Trainer:
    """One training run: the prepared model, optimizer and data order, and its ``TrainState``."""

    def __init__(self, model, train_data, validation_data, *, config: TrainConfig,  # noqa: ANN001
                 paths: RunPaths, pad_token_id: int, max_length: int, config_hash: str,
                 memory: Callable[[], dict], run_config: dict[str, Any] | None = None) -> None:
        self.config, self.paths, self.pad = config, paths, pad_token_id
        self.memory, self.run_config = memory, run_config
        self.accelerator = acc = make_accelerator(model)
        self.sharded = acc.is_fsdp2
        self.world, self.rank = acc.num_processes, acc.process_index
        # auto_batch may trade micro batch for accumulation; the effective batch stays.
        self.micro_batch_size = config.micro_batch_size
        self.accumulation = config.gradient_accumulation_steps
        self.examples = load_examples(train_data)
        lengths = [len(ids) for ids, _ in self.examples]
        singles = [[i] for i in range(len(lengths))]
        self.items = pack(lengths, max_length) if config.packing else singles
        self.item_lengths = [sum(lengths[i] for i in item) for item in self.items]
        self.steps_per_epoch = len(self._plan(0))
        if self.steps_per_epoch == 0:
            raise UserError(
                f"train: {len(self.items)} training rows cannot fill one optimizer step of "
                f"{config.micro_batch_size * config.gradient_accumulation_steps * self.world}; "
                "lower train.micro_batch_size or train.gradient_accumulation_steps, or add data"
            )
        self.total_steps = config.max_steps or math.ceil(config.epochs * self.steps_per_epoch)
        self.eval_every = (max(1, round(self.total_steps / 10)) if config.eval_steps == "auto"
                           else config.eval_steps)
        self.val_examples = load_examples(validation_data) if validation_data else []
        optimizer = build_optimizer(model, config)
        self.schedule = LearningRateSchedule(optimizer, config, self.total_steps)
        self.model, self.optimizer = acc.prepare(model, optimizer)
        self.params = [p for p in self.model.parameters() if p.requires_grad]
        self.fused = None  # Liger's linear cross-entropy, where the head allows it
        if config.kernels == "liger":
            from lorapipe.model.accelerated import fused_cross_entropy

            self.fused = fused_cross_entropy(acc.unwrap_model(self.model).get_output_embeddings())
        self.guard = NonFiniteGuard(config.max_nonfinite_steps)
        self.spike_guard = SpikeGuard(config.spikes)
        self.memory_watch = MemoryWatch(str(acc.device))
        self.state = TrainState(config_hash=config_hash, world_size=self.world)
        self.config_hash = config_hash
        self._planned: tuple[int, list] = (-1, [])

    # --- data -------------------------------------------------------------------------

    def _plan(self, epoch: int) -> list[list[list[int]]]:
        c = self.config
        return epoch_steps(self.item_lengths, seed=c.seed, epoch=epoch,
                           micro_batch_size=self.micro_batch_size,
                           accumulation=self.accumulation, world_size=self.world,
                           group_by_length=c.group_by_length)

    def _next_micro_batches(self) -> tuple[list[dict[str, torch.Tensor]], int]:
        """This process's share of the next step and its real (non-pad) token count.

        Advances to the next epoch when the current one is used up.
        """
        state = self.state
        if state.step_in_epoch >= self.steps_per_epoch:
            state.epoch, state.step_in_epoch = state.epoch + 1, 0
        if self._planned[0] != state.epoch:
            self._planned = (state.epoch, self._plan(state.epoch))
        step = self._planned[1][state.step_in_epoch]
        accum = self.accumulation
        mine = step[self.rank * accum:(self.rank + 1) * accum]
        rows = [[[self.examples[i] for i in self.items[item]] for item in micro]
                for micro in mine]
        if self.config.padding_free:  # one row per micro batch: examples end to end
            rows = [[[example for row in micro for example in row]] for micro in rows]
        batches = [collate(micro, self.pad) for micro in rows]
        real = sum(self.item_lengths[item] for micro in mine for item in micro)
        return batches, real

    def _sum(self, *values: float) -> list[float]:
        """Sum numbers over all processes (one all-reduce for all of them)."""
        if self.world == 1:
            return [float(v) for v in values]
        tensor = torch.tensor(values, dtype=torch.float64, device=self.accelerator.device)
        return self.accelerator.reduce(tensor, reduction="sum").tolist()

    # --- the run ----------------------------------------------------------------------

    def run(self, *, resume: bool = False, allow_config_change: bool = False) -> dict[str, Any]:
        """Train to the last step, an early stop or a signal; return the run's summary."""
        self._start(resume, allow_config_change)
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
                except torch.OutOfMemoryError as err:
                    self._halve_micro_batch(err)  # or explain what to change, and stop
                    continue  # the same step again, split finer
                except MemoryPressure as pressure:
                    self._log({"step": self.state.step + 1, "event": "memory_pressure",
                               "level": LEVELS[-1], "fraction": round(pressure.fraction, 4),
                               "action": "retry at half the micro batch"})
                    self._shrink_micro_batch()
                    continue  # before the update: the step again, split finer
                self._count(result)
                window.add(result)
                run_tokens += result.real_tokens
                policy = cfg.spikes.policy
                if result.spike is not None:
                    self._log({"step": self.state.step, "event": "spike", "action": policy,
                               "reason": result.spike, "loss": result.loss,
                               "grad_norm": result.grad_norm})
                    tqdm.write(f"step {self.state.step}: spike ({result.spike}): {policy}")
                    if policy == "rollback":
                        self.roll_back()  # continue from the checkpoint, at half the lr
                        window, bar.n = LogWindow.resumed(self.state.unlogged), self.state.step
                        continue
                elif not result.applied:
                    self._log({"step": self.state.step, "event": "nonfinite_skip",
                               "loss": result.loss, "grad_norm": result.grad_norm})
                    if self.guard.must_roll_back:
                        self.roll_back()  # continue from the checkpoint, at half the lr
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
                    self._watch_memory(record["memory"])
                improved = False
                every = self.eval_every
                if self.val_examples and (last or (every and step % every == 0)):
                    improved, stopped_early = self._after_eval(self.evaluate())
                interrupted = bool(self._sum(float(bool(stop)))[0])  # every process stops
                due = step % cfg.save_steps == 0 or last or stopped_early or interrupted
                if due or improved:  # the best step always has a checkpoint to publish
                    self.state.unlogged = window.sums()
                    self.save()
                if interrupted:
                    bar.close()
                    raise self._interrupted(stop.signal_name or "signal")
        bar.close()
        return self._finish(time.perf_counter() - started, run_tokens, stopped_early)

    def step(self) -> StepResult:
        """One optimizer step on the next effective batch; the caller counts it (``_count``).

        Backpropagates every micro-batch's loss sum divided by the step's trainable tokens
        on all processes (loss.py), syncing gradients only on the last micro-batch; clips;
        sets the scheduled lr from the state; applies the update unless the loss or the
        gradient is non-finite. The gradients are cleared either way.
        """
        acc, state = self.accelerator, self.state
        batches, real = self._next_micro_batches()
        step_tokens = int(self._sum(sum(trainable_tokens(b) for b in batches))[0])
        scale = backward_scale(step_tokens, self.world)
        total = 0.0
        for i, batch in enumerate(batches):
            batch = {k: v.to(acc.device) for k, v in batch.items()}
            last = i == len(batches) - 1
            with contextlib.nullcontext() if last else acc.no_sync(self.model):
                with acc.autocast(), self._offloading():
                    summed = loss_sum(self.model, batch, self.fused)
                acc.backward(summed * scale)
            total += summed.item()
            self._check_pressure()
        padded = sum(b["input_ids"].numel() for b in batches)
        total, real, padded = self._sum(total, real, padded)
        loss = total / max(step_tokens, 1)
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
                          trainable_tokens=step_tokens, real_tokens=int(real),
                          batch_tokens=int(padded), spike=spike)

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

    def _epoch(self) -> float:
        """Epochs done, fractional: the ``epoch`` of metrics.jsonl's records."""
        return round(self.state.epoch + self.state.step_in_epoch / self.steps_per_epoch, 4)

    # --- evaluation, checkpoints, rollback ---------------------------------------------

    @torch.no_grad()
    def evaluate(self) -> float:
        """Token-mean loss on the validation set, sharded over processes.

        Runs on the unwrapped model: DDP's forward syncs buffers, which would hang when
        the shards give the processes different numbers of batches.
        """
        model = self.accelerator.unwrap_model(self.model)
        model.eval()
        order = sorted(range(len(self.val_examples)), key=lambda i: len(self.val_examples[i][0]))
        mine = order[self.rank::self.world]
        size = self.micro_batch_size
        shards: list[list[int] | None] = [mine[s:s + size] for s in range(0, len(mine), size)]
        if self.sharded:  # every forward gathers weights from all: each runs the first's count
            shards += [None] * (math.ceil(len(order[::self.world]) / size) - len(shards))
        total, tokens = 0.0, 0
        for indices in shards:
            batch = collate([[self.val_examples[i]] for i in indices or order[:1]], self.pad)
            batch = {k: v.to(self.accelerator.device) for k, v in batch.items()}
            with self.accelerator.autocast():
                loss = loss_sum(model, batch).item()
            if indices is not None:  # a filler forward only keeps the others company
                total, tokens = total + loss, tokens + trainable_tokens(batch)
        model.train()
        total, tokens = self._sum(total, tokens)
        return total / max(tokens, 1)

    def _after_eval(self, eval_loss: float) -> tuple[bool, bool]:
        """Record an evaluation; return (improved on the best, patience exhausted)."""
        state, rule = self.state, self.config.early_stopping
        min_delta = rule.min_delta if rule else 0.0
        best = state.best_eval_loss
        improved = math.isfinite(eval_loss) and (best is None or eval_loss < best - min_delta)
        if improved:
            state.best_eval_loss, state.best_step = eval_loss, state.step
            state.evals_without_improvement = 0
        else:
            state.evals_without_improvement += 1
        stop = rule is not None and state.evals_without_improvement >= rule.patience
        self._log({"step": state.step, "epoch": self._epoch(),
                   "eval_loss": eval_loss, "best_eval_loss": state.best_eval_loss})
        if stop:
            self._log({"step": state.step, "event": "early_stop",
                       "best_step": state.best_step, "patience": rule.patience})
        return improved, stop

    def save(self) -> None:
        """Checkpoint the current step (all processes take part; the main one writes)."""
        rng = capture_rng()
        rng_states = gather_object([rng]) if self.world > 1 else [rng]
        model = self.accelerator.unwrap_model(self.model)
        main = self.accelerator.is_main_process
        # Collective when sharded: every process gathers; otherwise only the writer reads.
        weights = trainable_state(model) if main or self.sharded else {}
        optimizer = optimizer_state(self.optimizer) if main or self.sharded else {}
        if main:
            assert_finite(weights)
            save_checkpoint(self.paths.checkpoint(self.state.step), model=model,
                            optimizer_state=optimizer, state=self.state, rng_states=rng_states,
                            weights=weights if self.sharded else None)
            rotate(self.paths.checkpoints, self.config.save_total_limit, self.state.best_step)
        self.accelerator.wait_for_everyone()

    def restore(self, directory: Path) -> None:
        """Load a checkpoint's weights, optimizer, RNG and state (the lr follows the state)."""
        state, rng_states = load_checkpoint(
            directory, model=self.accelerator.unwrap_model(self.model), optimizer=self.optimizer)
        restore_rng(rng_states[self.rank] if len(rng_states) == self.world else rng_states[0])
        state.world_size = self.world
        self.state = state

    def roll_back(self) -> None:
        """Restore the newest valid checkpoint and halve the learning rate in effect.

        The checkpoint's state replaces the current one except for the run's tallies of
        non-finite steps, spikes and rollbacks, which carry on; one more rollback halves
        ``state.lr_scale``, so the schedule's next ``apply`` uses half the lr.
        """
        before = self.state
        if before.rollbacks >= MAX_ROLLBACKS:
            raise RuntimeError(
                f"training diverged: {MAX_ROLLBACKS} rollbacks did not help; lower "
                "train.learning_rate or check the data for broken samples")
        path, problems = newest_valid(self.paths.checkpoints)
        if path is None:
            raise RuntimeError("training became unstable and there is no valid checkpoint to "
                               "roll back to; lower train.learning_rate or save more often")
        self.restore(path)
        state = self.state
        state.rollbacks, state.nonfinite_steps = before.rollbacks + 1, before.nonfinite_steps
        state.spikes = before.spikes
        self.guard.reset()
        lr = min(self.schedule.lrs(state.step, state.lr_scale))  # the next update's
        self._log({"step": state.step, "event": "rollback", "from_step": before.step,
                   "checkpoint": path.name, "lr": lr, "problems": problems})

    def _watch_memory(self, snapshot: dict[str, Any]) -> None:
        """Report a newly crossed memory level (each process prints its own; metrics.jsonl
        holds the main process's)."""
        crossed = self.memory_watch.crossed(snapshot)
        if crossed is None:
            return
        level, fraction = crossed
        self._log({"step": self.state.step, "event": "memory_pressure", "level": level,
                   "fraction": round(fraction, 4), "suggestion": self._memory_advice()})
        who = f"process {self.rank}: " if self.world > 1 else ""
        tqdm.write(f"step {self.state.step}: {who}memory at {fraction:.0%} of the "
                   f"device's capacity. Try: {self._memory_advice()}")

    def _check_pressure(self) -> None:
        """auto_batch: after a micro batch, memory at 95% of the device's on any process
        abandons the step before its update (``MemoryPressure``), to be retried split finer
        like an out-of-memory error."""
        if not self.config.auto_batch or self.micro_batch_size == 1:
            return
        fraction = self.memory_watch.fraction(self.memory())
        if self._sum(float(fraction >= LEVELS[-1]))[0]:  # every process decides alike
            self.optimizer.zero_grad(set_to_none=True)
            raise MemoryPressure(fraction)

    def _halve_micro_batch(self, err: torch.OutOfMemoryError) -> None:
        """auto_batch: retry the step with a smaller micro batch and more accumulation.

        The micro batch is divided by its smallest factor (4 → 2, 3 → 1) and accumulation
        multiplied by it, so the effective batch is unchanged; steps are planned as effective
        batches before they are split (batching.py), so the retried step trains on the same
        samples with the same loss normalisation. Without auto_batch, or at a micro batch of
        1, raises a RuntimeError (from ``err``) that says what to change instead.
        """
        if not self.config.auto_batch or self.micro_batch_size == 1:
            raise RuntimeError(self._oom_advice()) from err
        self._shrink_micro_batch()

    def _shrink_micro_batch(self) -> None:
        self.optimizer.zero_grad(set_to_none=True)
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
        factor = next(f for f in range(2, self.micro_batch_size + 1)
                      if self.micro_batch_size % f == 0)
        self.micro_batch_size //= factor
        self.accumulation *= factor
        self._planned = (-1, [])
        self._log({"step": self.state.step + 1, "event": "auto_batch",
                   "micro_batch_size": self.micro_batch_size,
                   "gradient_accumulation_steps": self.accumulation})

    def _oom_advice(self) -> str:
        return (f"out of memory at step {self.state.step + 1} (the last checkpoint is "
                f"intact). Try: {self._memory_advice()}; then --resume")

    def _memory_advice(self) -> str:
        return (
            f"a smaller train.micro_batch_size (now {self.micro_batch_size}) with a larger "
            f"train.gradient_accumulation_steps (now {self.accumulation}) for the same "
            "effective batch, train.gradient_checkpointing: true, a lower adapter.r, a "
            "shorter data.max_length, or model.quantizer: nf4 if not used (or set "
            "train.auto_batch: true to do the first automatically)")

    def _log(self, record: dict[str, Any]) -> None:
        if self.accelerator.is_main_process:
            self.metrics.write(record)
            if "event" in record:
                tqdm.write(f"step {record['step']}: {record['event']} {record}")

    # --- start and end ----------------------------------------------------------------

    def _start(self, resume: bool, allow_config_change: bool) -> None:
        root = self.paths.checkpoints
        path = None
        if resume:
            path, problems = newest_valid(root)
            if path is None and problems:
                raise UserError(
                    f"no checkpoint in {root} can be resumed from: {'; '.join(problems)}; "
                    "delete the checkpoints to train from the start (or use `lorapipe run "
                    "CONFIG --overwrite` to start the whole run again)")
            for line in problems:
                tqdm.write(f"warning: {line}; trying the previous one", file=sys.stderr)
        elif list_checkpoints(root):
            raise UserError(
                f"{root} already holds checkpoints; pass --resume to continue that run, or "
                "delete the directory (or use `lorapipe run --overwrite`) to start again")
        if path is not None:
            saved = read_state(path / "state.json").config_hash
            if saved != self.config_hash and not allow_config_change:
                raise UserError(
                    f"{path} was written with a different config (hash {saved}, now "
                    f"{self.config_hash}); pass --allow-config-change to resume anyway")
            self.restore(path)
            self.state.config_hash = self.config_hash
            tqdm.write(f"resuming from {path} (step {self.state.step}/{self.total_steps})")
        elif resume:
            tqdm.write(f"no valid checkpoint in {root}; starting from the beginning")
        self.metrics = None
        if self.accelerator.is_main_process:
            resume_step = self.state.step if path is not None else None
            trackers = None
            if self.config.report_to:
                trackers = Trackers(self.config.report_to, paths=self.paths,
                                    resume_step=resume_step, ids=self.state.tracker_ids)
                if path is None and self.run_config is not None:
                    trackers.store_config(self.run_config)  # once: a resumed run has it
            self.metrics = MetricsLog(self.paths.metrics, resume_step=resume_step,
                                      trackers=trackers)
        if self.world > 1:
            kind = "fsdp2" if self.sharded else "ddp"
            self._log({"step": self.state.step, "event": "processes",
                       **placement(self.accelerator.unwrap_model(self.model), kind, self.world)})
        if path is None:
            set_seed(self.config.seed)
            self.save()  # step 0: a rollback target before the first scheduled checkpoint

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
        state = self.state
        chosen = state.best_step if state.best_step is not None else state.step
        summary = {
            "steps": state.step, "epochs": round(state.step / self.steps_per_epoch, 4),
            "seconds": round(seconds, 2), "tokens_per_s": round(run_tokens / max(seconds, 1e-9), 1),
            "trained_tokens": state.trained_tokens, "best_eval_loss": state.best_eval_loss,
            "best_step": state.best_step, "adapter_step": chosen, "stopped_early": stopped_early,
            "nonfinite_steps": state.nonfinite_steps, "spikes": state.spikes,
            "rollbacks": state.rollbacks,
        }
        if self.accelerator.is_main_process:
            source = self.paths.checkpoint(chosen)
            require_intact(source, f"checkpoint step-{chosen} was damaged after it was "
                           "written; delete it and run `lorapipe train CONFIG --resume`")
            with atomic_directory(self.paths.adapter) as tmp:
                shutil.copytree(source / "adapter", tmp, dirs_exist_ok=True)
                write_model_card(tmp, self.paths, "adapter", training=summary)
                write_manifest(tmp)
            self.metrics.write({"step": state.step, "event": "end", "memory": self.memory()})
            self.metrics.close()
        self.accelerator.wait_for_everyone()
        if self.accelerator.is_main_process:
            best = "n/a" if state.best_eval_loss is None else f"{state.best_eval_loss:.4f}"
            tqdm.write(f"trained {state.step} steps in {seconds:.1f}s "
                       f"({summary['tokens_per_s']:.0f} tokens/s), best eval loss {best} "
                       f"(step {state.best_step}); adapter/ from step {chosen}")
        return summary

