"""Experiment trackers (``train.report_to``) through accelerate's: TensorBoard, W&B, MLflow.

The resolved config goes to each tracker once, when a run starts; every record of
``metrics.jsonl`` goes with its numbers at its step. Where W&B and MLflow write is theirs
to say, through their usual variables (``WANDB_MODE``/``WANDB_DIR``/``WANDB_PROJECT``,
``MLFLOW_TRACKING_URI``/``MLFLOW_EXPERIMENT_NAME``); TensorBoard's event files go to the
run directory's ``tensorboard/``. A resumed run continues the same W&B and MLflow run
(their ids are kept in the checkpoint state) and TensorBoard drops the events written
after the checkpoint, so each reads as one uninterrupted run.

The trackers are built here rather than by ``Accelerator(log_with=...)``: the
TensorBoard writer needs the resumed step, which is known only after the accelerator
exists and a checkpoint has been chosen.
"""

from __future__ import annotations

import json
import os
import uuid
from typing import Any

from lorapipe.artifacts import RunPaths

PROJECT = "lorapipe"
# The Python module each tracker needs (checked at validate time).
MODULES = {"tensorboard": "tensorboard", "wandb": "wandb", "mlflow": "mlflow"}


def flatten(values: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"adapter": {"r": 16}}`` → ``{"adapter.r": 16}``; lists and None as text, which
    every tracker's hyperparameter table accepts."""
    flat: dict[str, Any] = {}
    for key, value in values.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(flatten(value, f"{name}."))
        elif isinstance(value, (bool, int, float, str)):
            flat[name] = value
        else:
            flat[name] = json.dumps(value)
    return flat


class Trackers:
    """The started trackers of one training process (the main one)."""

    def __init__(self, names: list[str], *, paths: RunPaths, resume_step: int | None,
                 ids: dict[str, str]) -> None:
        from accelerate.tracking import MLflowTracker, TensorBoardTracker, WandBTracker

        run_name = paths.root.name
        self.started: list[Any] = []
        for name in names:
            if name == "tensorboard":
                tracker = TensorBoardTracker("", str(paths.tensorboard), purge_step=resume_step)
            elif name == "wandb":
                ids.setdefault("wandb", uuid.uuid4().hex[:16])
                tracker = WandBTracker(os.environ.get("WANDB_PROJECT", PROJECT), name=run_name,
                                       id=ids["wandb"], resume="allow")
            else:
                tracker = MLflowTracker(PROJECT, run_id=ids.get("mlflow"), run_name=run_name)
            tracker.start()
            if name == "mlflow":
                ids["mlflow"] = tracker.active_run.info.run_id
            self.started.append(tracker)

    def store_config(self, config: dict[str, Any]) -> None:
        flat = flatten(config)
        for tracker in self.started:
            tracker.store_init_configuration(flat)

    def log(self, record: dict[str, Any]) -> None:
        numbers = {f"train/{key}": value for key, value in record.items()
                   if key != "step" and isinstance(value, (int, float))
                   and not isinstance(value, bool)}
        if numbers:
            for tracker in self.started:
                tracker.log(numbers, step=record["step"])

    def close(self) -> None:
        for tracker in self.started:
            tracker.finish()
