"""The running training's checkpoints: saving the current step from every process, and
continuing from a checkpoint — the one ``--resume`` picks, or the one a rollback returns to.

Either way that is the newest checkpoint that verifies (checkpoint.newest_valid: files
against the manifest, state.json against ``TrainState``'s schema), so a checkpoint torn by
a crash or damaged afterwards costs the steps since the previous one, not the run.
checkpoint.py is the format on disk; this module is how the loop's prepared (possibly
distributed) model and optimizer go into it and come back out.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from accelerate.utils import gather_object
from tqdm.auto import tqdm

from lorapipe.artifacts import RunPaths
from lorapipe.errors import UserError
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
from lorapipe.train.distributed import optimizer_state, trainable_state
from lorapipe.train.guard import assert_finite

if TYPE_CHECKING:
    from accelerate import Accelerator


def resume_point(root: Path, *, resume: bool, config_hash: str,
                 allow_config_change: bool) -> Path | None:
    """The checkpoint to continue from, or None to train from the start.

    Without ``resume``, checkpoints already in ``root`` are refused rather than
    overwritten. With it, the newest valid one is used (a line for each newer one that is
    not), unless it was written under another config: its hash must match unless
    ``allow_config_change``.
    """
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
        if saved != config_hash and not allow_config_change:
            raise UserError(
                f"{path} was written with a different config (hash {saved}, now "
                f"{config_hash}); pass --allow-config-change to resume anyway")
    elif resume:
        tqdm.write(f"no valid checkpoint in {root}; starting from the beginning")
    return path


class Checkpoints:
    """``checkpoints/`` as the prepared model and optimizer see them.

    ``sharded`` (FSDP2) is passed in, read before ``prepare``: on the CPU the accelerator
    reports MULTI_CPU afterwards, and a save that skipped the gather on the other
    processes would hang the main one.
    """

    def __init__(self, paths: RunPaths, *, accelerator: Accelerator, model: torch.nn.Module,
                 optimizer: torch.optim.Optimizer, keep: int, sharded: bool) -> None:
        self.paths, self.accelerator, self.keep = paths, accelerator, keep
        self.model, self.optimizer = model, optimizer
        self.sharded, self.world = sharded, accelerator.num_processes

    def save(self, state: TrainState) -> None:
        """Checkpoint ``state.step`` (all processes take part; the main one writes), then
        drop all but the newest ``keep`` and the best."""
        rng = capture_rng()
        rng_states = gather_object([rng]) if self.world > 1 else [rng]
        model = self.accelerator.unwrap_model(self.model)
        main = self.accelerator.is_main_process
        # Collective when sharded: every process gathers; otherwise only the writer reads.
        weights = trainable_state(model) if main or self.sharded else {}
        optimizer = optimizer_state(self.optimizer) if main or self.sharded else {}
        if main:
            assert_finite(weights)
            save_checkpoint(self.paths.checkpoint(state.step), model=model,
                            optimizer_state=optimizer, state=state, rng_states=rng_states,
                            weights=weights if self.sharded else None)
            rotate(self.paths.checkpoints, self.keep, state.best_step)
        self.accelerator.wait_for_everyone()

    def restore(self, directory: Path) -> TrainState:
        """Load a checkpoint's weights, optimizer and RNG in place; return its state (the lr
        follows the state).

        Each process takes its own RNG state when the checkpoint was written by as many
        processes, the first one's otherwise.
        """
        state, rng_states = load_checkpoint(
            directory, model=self.accelerator.unwrap_model(self.model), optimizer=self.optimizer)
        rank = self.accelerator.process_index
        restore_rng(rng_states[rank] if len(rng_states) == self.world else rng_states[0])
        state.world_size = self.world
        return state

    def roll_back(self, before: TrainState) -> tuple[TrainState, Path, list[str]]:
        """Restore the newest valid checkpoint; return its state, its path and a line for
        each newer one that is unusable.

        The checkpoint's state replaces ``before`` except for the run's tallies of
        non-finite steps, spikes and rollbacks, which carry on; one more rollback halves
        ``state.lr_scale``, so the schedule's next ``apply`` uses half the lr. A
        RuntimeError when ``MAX_ROLLBACKS`` have not helped or nothing valid is left.
        """
        if before.rollbacks >= MAX_ROLLBACKS:
            raise RuntimeError(
                f"training diverged: {MAX_ROLLBACKS} rollbacks did not help; lower "
                "train.learning_rate or check the data for broken samples")
        path, problems = newest_valid(self.paths.checkpoints)
        if path is None:
            raise RuntimeError("training became unstable and there is no valid checkpoint to "
                               "roll back to; lower train.learning_rate or save more often")
        state = self.restore(path)
        state.rollbacks, state.nonfinite_steps = before.rollbacks + 1, before.nonfinite_steps
        state.spikes = before.spikes
        return state, path, problems
