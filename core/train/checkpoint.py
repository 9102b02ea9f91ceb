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
every file is checked against the manifest, and state.json against ``TrainState``'s schema
(a manifest proves a file was not damaged, not that its values are sane: one edited by hand
and re-hashed must not set ``step`` to 1e30 or the learning rate to zero); a corrupt,
partial or insane newest checkpoint is reported and the previous valid one is used.
"""

from __future__ import annotations

import dataclasses
import random
import re
from pathlib import Path
from typing import Annotated, Any

import numpy as np
import torch
from peft import PeftModel, set_peft_model_state_dict
from pydantic import ConfigDict, Field, TypeAdapter, ValidationError, model_validator, with_config
from safetensors.torch import load_file
from typing_extensions import TypedDict

from lorapipe.atomic import atomic_directory, atomic_write_json
from lorapipe.config.messages import file_problem
from lorapipe.confinement import remove_tree
from lorapipe.errors import UserError
from lorapipe.manifest import problem, write_manifest
from lorapipe.safetensors_check import adapter_problem
from lorapipe.train.distributed import load_optimizer_state

_NAME = re.compile(r"^step-(\d+)$")

# state.json's schema is TrainState's annotations below, checked by pydantic (``read_state``):
# strict types (no 1.0 or "3" or true for a count), no unknown keys, every float finite, and
# bounds no run reaches. 10**12 steps is ~30 years at 1000 steps/s; a token count is bounded
# by int64, what the tensors that count them hold.
_STEPS = 10**12
Count = Annotated[int, Field(ge=0, le=_STEPS)]
Tokens = Annotated[int, Field(ge=0, le=2**63 - 1)]
# The loop ends a run that needs more rollbacks, so no state.json lorapipe writes holds more;
# above it a resumed run would train at lr x 0.5**rollbacks (1e6 gives 0.0: a run that
# silently learns nothing).
MAX_ROLLBACKS = 5
# spikes.window has no upper bound in the config; a million floats is far past any sane one
History = Annotated[list[float], Field(max_length=10**6)]


@with_config(ConfigDict(extra="forbid", strict=True))
class Unlogged(TypedDict, total=False):
    """LogWindow.sums(): the open metrics window (empty before the first save)."""

    # The one float allowed to be non-finite: a window holding a skipped NaN step sums to
    # NaN, and it only decides what the next metrics line reports.
    loss_sum: float
    units: Tokens  # the objective's count (absent in checkpoints from before objectives)
    trainable_tokens: Tokens
    real_tokens: Tokens
    batch_tokens: Tokens
    # the objective's metrics, weighted like loss_sum (and as free to be non-finite)
    metrics: Annotated[dict[str, float], Field(max_length=1000)]


@dataclasses.dataclass
class TrainState:
    """The loop's counters; everything else about a run follows from these and the config.

    The annotations are also state.json's schema (``read_state``), so a field's type and
    bounds live in one place.
    """

    __pydantic_config__ = ConfigDict(extra="forbid", strict=True, allow_inf_nan=False)

    step: Count = 0  # optimizer steps taken (applied or skipped)
    epoch: Count = 0
    step_in_epoch: Count = 0  # position of the sampler: steps of ``epoch`` already consumed
    trained_tokens: Tokens = 0
    best_eval_loss: float | None = None
    best_step: Count | None = None
    evals_without_improvement: Count = 0
    nonfinite_steps: Count = 0  # these three carry on across rollbacks, so may exceed step
    spikes: Count = 0
    rollbacks: Annotated[int, Field(ge=0, le=MAX_ROLLBACKS)] = 0
    # plan.config_hash: 16 hex digits (up to a whole sha256, should that change)
    config_hash: Annotated[str, Field(pattern=r"^[0-9a-f]{0,64}$")] = ""
    world_size: Annotated[int, Field(ge=1, le=2**20)] = 1
    # sums of the steps since the last metrics line (LogWindow.sums), so a resumed run's
    # first line covers the same steps as the uninterrupted run's
    unlogged: Unlogged = dataclasses.field(default_factory=dict)
    # the last normal steps' loss and gradient norm, which spikes are measured against
    recent_losses: History = dataclasses.field(default_factory=list)
    recent_grad_norms: History = dataclasses.field(default_factory=list)
    # the W&B and MLflow run ids (train.report_to), so a resumed run continues that run
    tracker_ids: dict[Annotated[str, Field(max_length=64)],
                      Annotated[str, Field(max_length=256)]] = dataclasses.field(
        default_factory=dict)

    @model_validator(mode="after")
    def _consistent(self) -> TrainState:
        """Relations between fields that the loop keeps (checked on state.json only)."""
        if self.epoch > self.step or self.step_in_epoch > self.step:
            raise ValueError(f"epoch {self.epoch} / step_in_epoch {self.step_in_epoch} "
                             f"cannot exceed step {self.step}")
        if (self.best_step is None) != (self.best_eval_loss is None):
            raise ValueError("best_step and best_eval_loss must be set together")
        if self.best_step is not None and self.best_step > self.step:
            raise ValueError(f"best_step {self.best_step} is after step {self.step}")
        return self

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


_STATE = TypeAdapter(TrainState)


def read_state(path: Path) -> TrainState:
    """A checkpoint's state.json, checked against ``TrainState``'s schema; a UserError
    naming the file, the field and what is wrong with it otherwise."""
    try:
        return _STATE.validate_json(path.read_bytes())
    except OSError as err:
        raise UserError(f"{path}: cannot be read ({err.strerror or err})") from None
    except ValidationError as err:
        raise UserError(f"{path}: {file_problem(err, 'not a TrainState field')}") from None


def _state_problem(directory: Path) -> str | None:
    try:
        read_state(directory / "state.json")
    except UserError as err:
        return str(err)
    return None


def newest_valid(root: Path) -> tuple[Path | None, list[str]]:
    """The newest checkpoint that verifies, and a line for each newer one that did not:
    its files must match its manifest, its state.json ``TrainState``'s schema, and its
    adapter's safetensors header must fit the file (a forger can re-hash a manifest)."""
    problems = []
    for step, path in reversed(list_checkpoints(root)):
        found = problem(path) or _state_problem(path) or adapter_problem(path / "adapter")
        if found is None:
            return path, problems
        problems.append(f"checkpoint step-{step} is unusable ({found})")
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
    state = read_state(directory / "state.json")
    return state, torch.load(directory / "rng.pt", weights_only=True)


def rotate(root: Path, keep: int, best_step: int | None) -> None:
    """Keep the newest ``keep`` checkpoints plus the best one; drop stale temp directories."""
    found = list_checkpoints(root)
    for step, path in found[:-keep]:
        if step != best_step:
            remove_tree(path)
    for leftover in root.glob(".step-*"):
        remove_tree(leftover)
