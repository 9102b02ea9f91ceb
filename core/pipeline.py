"""Runs stages in order and records them in run.json (ARCHITECTURE.md, "The run directory").

Stages talk only through files in ``output_dir``, so each one can run alone
(``lorapipe train``) or as part of ``lorapipe run``, which skips the ones run.json marks
done when resuming.
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.metadata
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from lorapipe import __version__
from lorapipe.atomic import atomic_write_json, atomic_write_text
from lorapipe.confinement import confined, require_no_links
from lorapipe.context import RunContext
from lorapipe.errors import UserError
from lorapipe.manifest import problem
from lorapipe.model.source import refuse_stored_quantized, resolve_model_path
from lorapipe.report.page import write_report
from lorapipe.run_record import read_run_record
from lorapipe.rundir import (
    check_location,
    claim,
    clear,
    locked,
    remove_leftovers,
    require_only_ours,
)

# Stage name → module defining ``run_stage(ctx) -> dict`` (its summary), in run order.
STAGES: dict[str, str] = {
    "prepare": "lorapipe.data.stage",
    "train": "lorapipe.train.stage",
    "evaluate": "lorapipe.evaluate.stage",
    "merge": "lorapipe.merge.stage",
    "export": "lorapipe.export.stage",
}

_LIBRARIES = ("torch", "transformers", "peft", "bitsandbytes", "datasets", "accelerate", "gguf")


def stage_function(name: str) -> Callable[[RunContext], dict[str, Any]]:
    # Imported on use: `lorapipe validate` must not pay for torch and transformers.
    return importlib.import_module(STAGES[name]).run_stage


def _versions() -> dict[str, str | None]:
    versions: dict[str, str | None] = {"lorapipe": __version__}
    for lib in _LIBRARIES:
        try:
            versions[lib] = importlib.metadata.version(lib)
        except importlib.metadata.PackageNotFoundError:
            versions[lib] = None
    return versions


def _read_run_json(ctx: RunContext) -> dict[str, Any]:
    return read_run_record(ctx.paths.run_json)


def _write_run_json(ctx: RunContext, record: dict[str, Any]) -> None:
    record.update(config_hash=ctx.config_hash, versions=_versions())
    atomic_write_json(ctx.paths.run_json, record)


@contextlib.contextmanager
def run_directory(ctx: RunContext) -> Iterator[None]:
    """Check, claim and lock ``output_dir`` while the work runs.

    Under torchrun only the main process (rank 0) claims and locks it: the others work
    inside the same run and write nothing but what rank 0 also writes.
    """
    paths = ctx.paths
    if not ctx.is_main_process:
        paths.root.mkdir(parents=True, exist_ok=True)
        yield
        return
    check_location(paths.root, ctx.read_paths())
    if paths.root.is_dir():
        require_no_links(paths.root)  # before the marker or the lock is touched
    claim(paths)
    with locked(paths.root), confined(paths.root):
        remove_leftovers(paths.root)
        require_only_ours(paths)
        yield


def run_one_stage(ctx: RunContext, name: str) -> dict[str, Any]:
    """Run a stage, recording its status and timing in run.json whatever the outcome."""
    with run_directory(ctx):
        return _run_stage(ctx, name)


def _run_stage(ctx: RunContext, name: str) -> dict[str, Any]:
    func = stage_function(name)
    atomic_write_text(ctx.paths.resolved_config, ctx.plan.resolved_yaml())
    record = _read_run_json(ctx)
    stages = record.setdefault("stages", {})
    stages[name] = {"status": "running", "started_at": time.time()}
    started = time.perf_counter()
    with _stop_on_sigterm(ctx, record, name, started):
        _write_run_json(ctx, record)
        try:
            summary = func(ctx)
        except BaseException as err:
            status = "interrupted" if isinstance(err, KeyboardInterrupt) else "failed"
            _end_stage(ctx, record, name, started, status=status, error=str(err)[:500])
            raise
    _end_stage(ctx, record, name, started, status="done", summary=summary or {})
    return summary or {}


def _end_stage(ctx: RunContext, record: dict[str, Any], name: str, started: float,
               **outcome: Any) -> None:
    """Record how stage ``name`` ended (status, time taken, error or summary) in run.json."""
    record["stages"][name].update(seconds=round(time.perf_counter() - started, 3), **outcome)
    _write_run_json(ctx, record)


@contextlib.contextmanager
def _stop_on_sigterm(ctx: RunContext, record: dict[str, Any], name: str,
                     started: float) -> Iterator[None]:
    """SIGTERM (a scheduler, ``kill``) during a stage: record it as interrupted, exit 130.

    The process ends at once, as after ``kill -9`` (which every stage survives: writes are
    atomic and the next start removes what a killed stage left), rather than by raising
    KeyboardInterrupt wherever the signal lands: an exception raised in the middle of an
    import, a fork or a library's ``except BaseException`` can be swallowed or leave
    half-made state behind. Training installs its own handler inside this one, which first
    finishes the step and writes a checkpoint.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def stop(signum: int, frame: object) -> None:
        _end_stage(ctx, record, name, started, status="interrupted", error="SIGTERM")
        print("interrupted", file=sys.stderr, flush=True)
        sys.stdout.flush()
        os._exit(130)

    previous = signal.signal(signal.SIGTERM, stop)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def check_exporters(ctx: RunContext) -> None:
    """Refuse a model an exporter cannot handle, or one stored quantized, before hours of
    training, not after."""
    refuse_stored_quantized(ctx.config.model.name_or_path)
    model_dir = Path(resolve_model_path(ctx.config.model.name_or_path))
    if not model_dir.is_dir():
        return  # a hub id: the exporter checks merged/ before it writes anything
    for exporter in ctx.plan.exporters:
        exporter.check(model_dir)


def run_pipeline(ctx: RunContext, overwrite: bool = False) -> dict[str, dict[str, Any]]:
    """Every stage in order, then report.html; with ``ctx.resume`` the stages already done
    are skipped."""
    with run_directory(ctx):
        return _run_pipeline(ctx, overwrite)


def _run_pipeline(ctx: RunContext, overwrite: bool) -> dict[str, dict[str, Any]]:
    root = ctx.paths.root
    if overwrite:
        clear(ctx.paths)  # before reading run.json: --overwrite is the way out of a damaged one
    record = _read_run_json(ctx)
    if record.get("stages"):
        if not ctx.resume:
            raise UserError(
                f"output_dir {root} already holds a run; pass --resume to continue it "
                "or --overwrite to start again"
            )
        elif record.get("config_hash") != ctx.config_hash and not ctx.allow_config_change:
            raise UserError(
                f"the config differs from the one {root} was run with "
                f"(see {ctx.paths.resolved_config}); pass --allow-config-change to "
                "resume anyway, or --overwrite to start again"
            )
    from lorapipe.model.gpu_options import check_device_options

    check_exporters(ctx)
    check_device_options(ctx.config, ctx.device, ctx.dtype)  # before hours of prepare
    summaries: dict[str, dict[str, Any]] = {}
    rerun = False  # once a stage runs again, every later one must use its new outputs
    for name in STAGES:
        done = record.get("stages", {}).get(name, {}).get("status") == "done"
        if ctx.resume and done and not rerun:
            damaged = _damaged_output(ctx, name)
            if damaged is None:
                summaries[name] = record["stages"][name].get("summary", {})
                continue
            print(f"{name}: running again, its output is damaged: {damaged}", file=sys.stderr)
        if rerun and ctx.is_main_process:
            require_no_links(root)  # one made while the stage before ran
        rerun = True
        summaries[name] = _run_stage(ctx, name)
    if ctx.is_main_process:
        write_report(root)
    return summaries


def _damaged_output(ctx: RunContext, stage: str) -> str | None:
    """What is wrong with a finished stage's published output, if anything."""
    paths = ctx.paths
    outputs = {
        "prepare": [paths.data],
        "train": [paths.adapter],
        "merge": [paths.merged] if ctx.config.merge.enabled else [],
        "export": [paths.export_dir(exporter.name) for exporter in ctx.plan.exporters],
    }
    for directory in outputs.get(stage, []):
        found = problem(directory)
        if found is not None:
            return found
    return None
