"""``train.report_to``: TensorBoard, W&B (offline) and MLflow (local file store) get the
config once and every logged number, read back with each tool's own reader."""

from __future__ import annotations

import glob
import json
import struct
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError
from tinyrun import config, make_data, make_model, run

from lorapipe.config import TrainConfig
from lorapipe.train.trackers import flatten

RUN_CONFIG = {"adapter": {"r": 4, "target_modules": ["q_proj"]}, "train": {"lr": 1e-3}}


@pytest.fixture(scope="module")
def tracking_env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """One directory for the module: W&B reads its settings once per process."""
    root = tmp_path_factory.mktemp("tracking")
    with pytest.MonkeyPatch.context() as env:
        env.setenv("WANDB_MODE", "offline")
        env.setenv("WANDB_DIR", str(root))
        env.setenv("WANDB_SILENT", "true")
        env.setenv("MLFLOW_TRACKING_URI", (root / "mlruns").as_uri())
        env.setenv("MLFLOW_ALLOW_FILE_STORE", "true")  # MLflow 3 prefers a database
        yield root


def tracker_ids(out: Path) -> dict[str, str]:
    last = max((out / "checkpoints").glob("step-*"), key=lambda p: int(p.name[5:]))
    return json.loads((last / "state.json").read_text())["tracker_ids"]


def mlflow_run(name: str) -> Any:
    from mlflow.tracking import MlflowClient

    client = MlflowClient()
    [found] = client.search_runs([e.experiment_id for e in client.search_experiments()],
                                 filter_string=f"attributes.run_name = '{name}'")
    return client, found


def wandb_files(root: Path, run_id: str) -> list[str]:
    return glob.glob(str(root / "wandb" / "offline-run-*" / f"run-{run_id}.wandb"))


def logged_losses(out: Path) -> dict[int, float]:
    records = [json.loads(line) for line in (out / "metrics.jsonl").open()]
    return {r["step"]: r["loss"] for r in records if "loss" in r and "event" not in r}


def wandb_records(run_file: str) -> list[Any]:
    """The records of a W&B offline run file (LevelDB log format: 32 KiB blocks of
    checksummed chunks after a 7-byte header), decoded with W&B's own protobuf schema."""
    from wandb.proto import wandb_internal_pb2

    raw = Path(run_file).read_bytes()
    assert raw[:4] == b":W&B"
    records, pending, pos, block = [], b"", 7, 32768
    while pos + 7 <= len(raw):
        left = block - pos % block
        _, length, kind = struct.unpack("<IHB", raw[pos:pos + 7])
        if left < 7 or (length == 0 and kind == 0):
            pos += left  # the block's zero padding
            continue
        chunk, pos = raw[pos + 7:pos + 7 + length], pos + 7 + length
        pending = chunk if kind in (1, 2) else pending + chunk
        if kind in (1, 4):  # a whole record, or the last chunk of one
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pending)
            records.append(record)
    return records


def test_every_tracker_gets_the_config_once_and_every_step(tracking_env: Path) -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out = tracking_env / "run-a"
    cfg = config(max_steps=6, report_to=["tensorboard", "wandb", "mlflow"])
    run(out, make_model(), make_data(40), None, cfg, run_config=RUN_CONFIG)
    losses = logged_losses(out)
    assert sorted(losses) == list(range(1, 7))

    events = EventAccumulator(str(out / "tensorboard"))
    events.Reload()
    assert {e.step: e.value for e in events.Scalars("train/loss")} == pytest.approx(losses)

    client, found = mlflow_run("run-a")
    assert found.info.run_id == tracker_ids(out)["mlflow"]
    assert found.data.params["adapter.r"] == "4"
    assert found.data.params["adapter.target_modules"] == '["q_proj"]'
    history = client.get_metric_history(found.info.run_id, "train/loss")
    assert {m.step: m.value for m in history} == pytest.approx(losses)

    [run_file] = wandb_files(tracking_env, tracker_ids(out)["wandb"])
    records = wandb_records(run_file)
    configs = [r.config for r in records if r.WhichOneof("record_type") == "config"]
    stored = {item.key: json.loads(item.value_json)
              for c in configs for item in c.update}
    assert stored["adapter.r"] == 4 and stored["train.lr"] == 1e-3
    history = {}
    for record in records:
        if record.WhichOneof("record_type") == "history":
            # a key with "/" is stored as its parts
            items = {item.key or "/".join(item.nested_key): json.loads(item.value_json)
                     for item in record.history.item}
            if "train/loss" in items:
                history[items["_step"]] = items["train/loss"]
    assert history == pytest.approx(losses)


def test_a_resumed_run_continues_the_same_tracker_runs(tracking_env: Path) -> None:
    out = tracking_env / "run-b"
    first = config(max_steps=4, report_to=["wandb", "mlflow"])
    run(out, make_model(), make_data(40), None, first, run_config=RUN_CONFIG)
    more = config(max_steps=8, report_to=["wandb", "mlflow"])
    run(out, make_model(), make_data(40), None, more, run_config=RUN_CONFIG, resume=True,
        allow_config_change=True)
    losses = logged_losses(out)
    assert sorted(losses) == list(range(1, 9))

    client, found = mlflow_run("run-b")  # one run
    history = client.get_metric_history(found.info.run_id, "train/loss")
    assert {m.step: m.value for m in history} == pytest.approx(losses)
    # W&B keeps a file per process that wrote to the run: both under the one run id
    assert len(wandb_files(tracking_env, tracker_ids(out)["wandb"])) == 2


def test_a_tracker_that_is_not_installed_is_named_at_validate(monkeypatch) -> None:  # noqa: ANN001
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "wandb" else real(name, *a))
    with pytest.raises(ValidationError, match="wandb is not installed; pip install wandb"):
        TrainConfig(report_to=["wandb"])
    with pytest.raises(ValidationError, match="each tracker once"):
        TrainConfig(report_to=["mlflow", "mlflow"])


def test_flatten() -> None:
    assert flatten({"a": {"b": 1, "c": [1, 2], "d": None}, "e": True}) == {
        "a.b": 1, "a.c": "[1, 2]", "a.d": "null", "e": True}
