"""Checkpoints: everything needed to continue a run bit for bit, written atomically.

``checkpoints/step-<N>/`` holds::

    adapter/            the adapter in PEFT format (save_pretrained)
    optimizer.pt        optimizer state_dict (loaded with weights_only=True)
    rng.pt              python / numpy / torch (/ cuda) RNG states, one entry per process
    state.json          TrainState: step, epoch, position in the epoch, best metric,
                        rollbacks, ... (also the learning-rate schedule's state, see below)
    manifest.json       sha256 of every file above, written last

There is no scheduler file: the learning rate is a pure function of ``step`` and
``TrainState.lr_scale`` (0.5 per rollback; schedule.py), so state.json alone puts the
schedule where it was, the halving of every rollback included.

The directory is built under a temporary name and renamed into place, so a crash leaves
either a complete checkpoint or a dot-prefixed temp directory that is ignored. On resume
every file is checked against the manifest; a corrupt or partial newest checkpoint is
reported and the previous valid one is used.
"""

from __future__ import annotations

import dataclasses
import json
import random
import re
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch
from peft import PeftModel, set_peft_model_state_dict
from safetensors.torch import load_file

from lorapipe.atomic import atomic_directory, atomic_write_json
from lorapipe.manifest import problem, write_manifest
from lorapipe.train.distributed import load_optimizer_state

_NAME = re.compile(r"^step-(\d+)$")


@dataclasses.dataclass
class TrainState:
    """The loop's counters; everything else about a run follows from these and the config."""

    step: int = 0  # optimizer steps taken (applied or skipped)
    epoch: int = 0
    step_in_epoch: int = 0  # position of the sampler: steps of ``epoch`` already consumed
    trained_tokens: int = 0
    best_eval_loss: float | None = None
    best_step: int | None = None
    evals_without_improvement: int = 0
    nonfinite_steps: int = 0
    spikes: int = 0
    rollbacks: int = 0
    config_hash: str = ""
    world_size: int = 1
    # sums of the steps since the last metrics line (LogWindow.sums), so a resumed run's
    # first line covers the same steps as the uninterrupted run's
    unlogged: dict[str, float] = dataclasses.field(default_factory=dict)
    # the last normal steps' loss and gradient norm, which spikes are measured against
    recent_losses: list[float] = dataclasses.field(default_factory=list)
    recent_grad_norms: list[float] = dataclasses.field(default_factory=list)
    # the W&B and MLflow run ids (train.report_to), so a resumed run continues that run
    tracker_ids: dict[str, str] = dataclasses.field(default_factory=dict)

    @property
    def lr_scale(self) -> float:
        """Multiplier of the scheduled learning rate: each rollback halves it.

        Derived from ``rollbacks`` rather than stored beside it, so the two cannot disagree
        and a checkpoint's state.json restores the scale with the count.
        """
        return 0.5 ** self.rollbacks


def capture_rng() -> dict[str, Any]:
    state = np.random.get_state()
    rng = {
        "python": random.getstate(),
        # numpy's tuple holds an ndarray; a list keeps the file loadable with weights_only
        "numpy": (state[0], state[1].tolist(), *state[2:]),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        rng["cuda"] = torch.cuda.get_rng_state_all()
    return rng


def restore_rng(rng: dict[str, Any]) -> None:
    random.setstate(rng["python"])
    kind, keys, *rest = rng["numpy"]
    np.random.set_state((kind, np.array(keys, dtype=np.uint32), *rest))
    torch.set_rng_state(rng["torch"])
    if "cuda" in rng and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(rng["cuda"])



def save_checkpoint(directory: Path, *, model: PeftModel, optimizer_state: dict[str, Any],
                    state: TrainState, rng_states: list[dict[str, Any]],
                    weights: dict[str, torch.Tensor] | None = None) -> None:
    """Write a complete checkpoint at ``directory`` (replacing one that exists).

    ``weights``: the trainable parameters in full, for a sharded model whose own
    parameters hold only this process's shard (distributed.trainable_state).
    """
    with atomic_directory(directory) as tmp:
        model.save_pretrained(tmp / "adapter", state_dict=weights)
        torch.save(optimizer_state, tmp / "optimizer.pt")
        torch.save(rng_states, tmp / "rng.pt")
        atomic_write_json(tmp / "state.json", dataclasses.asdict(state))
        write_manifest(tmp)



def list_checkpoints(root: Path) -> list[tuple[int, Path]]:
    """Checkpoint directories by step, oldest first (temp directories are not listed)."""
    if not root.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in root.iterdir() if (m := _NAME.match(p.name))]
    return sorted(found)


def newest_valid(root: Path) -> tuple[Path | None, list[str]]:
    """The newest checkpoint that verifies, and a line for each newer one that did not."""
    problems = []
    for step, path in reversed(list_checkpoints(root)):
        found = problem(path)
        if found is None:
            return path, problems
        problems.append(f"checkpoint step-{step} is unusable ({found}); trying the previous one")
    return None, problems


def load_checkpoint(directory: Path, *, model: PeftModel, optimizer: torch.optim.Optimizer,
                    ) -> tuple[TrainState, list[dict[str, Any]]]:
    """Load weights and optimizer state in place; return the counters and RNG states.

    A sharded (FSDP2) model takes the full tensors as they are: FSDP2's load hooks keep
    each process's slice.
    """
    weights = load_file(str(directory / "adapter" / "adapter_model.safetensors"))
    result = set_peft_model_state_dict(model, weights)
    if getattr(result, "unexpected_keys", None):
        raise RuntimeError(f"{directory}: adapter does not fit the model: {result.unexpected_keys}")
    load_optimizer_state(optimizer, torch.load(directory / "optimizer.pt", weights_only=True))
    state = TrainState(**json.loads((directory / "state.json").read_text()))
    return state, torch.load(directory / "rng.pt", weights_only=True)


def rotate(root: Path, keep: int, best_step: int | None) -> None:
    """Keep the newest ``keep`` checkpoints plus the best one; drop stale temp directories."""
    found = list_checkpoints(root)
    for step, path in found[:-keep]:
        if step != best_step:
            shutil.rmtree(path)
    for leftover in root.glob(".step-*"):
        shutil.rmtree(leftover, ignore_errors=True)
