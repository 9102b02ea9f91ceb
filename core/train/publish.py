"""The end of training: the run's summary, and ``adapter/`` published from one checkpoint.

The published step is the best evaluation's (the last step's without a validation set);
the loop always checkpoints an improving step, so that checkpoint exists. It is verified
against its manifest first: a checkpoint damaged after it was written must not become
the adapter every later stage trusts.
"""

from __future__ import annotations

import shutil
from typing import Any

from lorapipe.artifacts import RunPaths
from lorapipe.atomic import atomic_directory
from lorapipe.cards import write_model_card
from lorapipe.manifest import require_intact, write_manifest
from lorapipe.train.checkpoint import TrainState


def run_summary(state: TrainState, *, steps_per_epoch: int, seconds: float, run_tokens: float,
                stopped_early: bool) -> dict[str, Any]:
    """What ``train`` returns (recorded in run.json and the model card); ``adapter_step`` is
    the step ``publish_adapter`` publishes."""
    chosen = state.best_step if state.best_step is not None else state.step
    return {
        "steps": state.step, "epochs": round(state.step / steps_per_epoch, 4),
        "seconds": round(seconds, 2), "tokens_per_s": round(run_tokens / max(seconds, 1e-9), 1),
        "trained_tokens": state.trained_tokens, "best_eval_loss": state.best_eval_loss,
        "best_step": state.best_step, "adapter_step": chosen, "stopped_early": stopped_early,
        "nonfinite_steps": state.nonfinite_steps, "spikes": state.spikes,
        "rollbacks": state.rollbacks,
    }


def publish_adapter(paths: RunPaths, summary: dict[str, Any]) -> None:
    """Write ``adapter/`` from the chosen checkpoint's adapter, with its model card and
    manifest, atomically (main process only)."""
    chosen = summary["adapter_step"]
    source = paths.checkpoint(chosen)
    require_intact(source, f"checkpoint step-{chosen} was damaged after it was "
                   "written; delete it and run `lorapipe train CONFIG --resume`")
    with atomic_directory(paths.adapter) as tmp:
        shutil.copytree(source / "adapter", tmp, dirs_exist_ok=True)
        write_model_card(tmp, paths, "adapter", training=summary)
        write_manifest(tmp)


def closing_line(summary: dict[str, Any], seconds: float) -> str:
    """The line printed when training ends."""
    best_loss = summary["best_eval_loss"]
    best = "n/a" if best_loss is None else f"{best_loss:.4f}"
    return (f"trained {summary['steps']} steps in {seconds:.1f}s "
            f"({summary['tokens_per_s']:.0f} tokens/s), best eval loss {best} "
            f"(step {summary['best_step']}); adapter/ from step {summary['adapter_step']}")
