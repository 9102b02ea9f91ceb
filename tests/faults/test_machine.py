"""The machine misbehaving under a run: a disk that fills up during train, merge, export
or report, and an output directory that turns read-only. Each ends in one line naming
the directory and what to do, exit 1, no traceback; nothing half-written is published;
once space is freed the run goes on with --resume. (That a resumed run trains the adapter
an uninterrupted one does is tests/train/test_resume.py's.)

The run lives on a small tmpfs (skipped where one cannot be mounted); the disk is filled
with a file that leaves a few KiB free before each stage.
"""

from __future__ import annotations

import subprocess
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from lorapipe.cli import main

SAMPLE = Path(__file__).resolve().parents[2] / "configs" / "data" / "quickstart.jsonl"
SETTINGS = {
    "model": {"name_or_path": "tiny-llama"},
    "data": {"loader": {"name": "jsonl", "path": str(SAMPLE)}, "max_length": 128},
    "train": {"max_steps": 4, "save_steps": 2, "micro_batch_size": 4},
    "evaluate": {"evaluators": []},
    "export": {"exporters": [{"name": "gguf", "types": ["f16"]}]},
}


@pytest.fixture
def disk(tmp_path: Path) -> Iterator[Path]:
    small = tmp_path / "small"
    small.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=40m", "tmpfs", str(small)],
                             capture_output=True, text=True, check=False)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here: {mounted.stderr.strip()}")
    try:
        yield small
    finally:
        subprocess.run(["umount", str(small)], check=False)


@dataclass
class Done:
    returncode: int
    stderr: str


@pytest.fixture
def cli(capsys: pytest.CaptureFixture[str]) -> Callable[..., Done]:
    """The command line, in this process (as a user runs it, less the start-up cost)."""
    def call(*args: str) -> Done:
        capsys.readouterr()
        code = main(list(args))
        return Done(code, capsys.readouterr().err)
    return call


def _fill(disk: Path, leave_kib: int = 64) -> Path:
    filler = disk / "filler"
    filler.unlink(missing_ok=True)
    free = (subprocess.run(["df", "-k", "--output=avail", str(disk)], capture_output=True,
                           text=True, check=True).stdout.split()[-1])
    with filler.open("wb") as handle:
        handle.truncate(0)
        handle.write(b"\0" * (max(int(free) - leave_kib, 0) * 1024))
    return filler


def _one_line_full(done: Done, run: Path) -> None:
    assert done.returncode == 1, done.stderr[-3000:]
    assert f"error: the disk is full writing in {run}" in done.stderr, done.stderr[-3000:]
    assert "Traceback" not in done.stderr


def _config(path: Path, run: Path) -> Path:
    path.write_text(yaml.safe_dump({**SETTINGS, "output_dir": str(run)}))
    return path


def test_a_disk_that_fills_up_in_each_stage_ends_in_one_line_and_resumes(
        disk: Path, tmp_path: Path, cli: Callable[..., Done]) -> None:
    run = disk / "run"
    config = _config(tmp_path / "small.yaml", run)
    _cli = cli
    assert _cli("prepare", str(config)).returncode == 0

    filler = _fill(disk)
    _one_line_full(_cli("train", str(config)), run)
    assert not (run / "adapter").exists()
    filler.unlink()
    resumed = _cli("train", str(config), "--resume")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert (run / "adapter" / "adapter_model.safetensors").is_file()

    filler = _fill(disk)
    _one_line_full(_cli("merge", str(config)), run)
    assert not (run / "merged").exists()
    filler.unlink()
    assert _cli("merge", str(config)).returncode == 0

    filler = _fill(disk)
    _one_line_full(_cli("export", str(config)), run)
    assert not list((run / "export").rglob("*.gguf"))
    filler.unlink()
    assert _cli("export", str(config)).returncode == 0
    assert (run / "export" / "gguf" / "model-f16.gguf").is_file()

    filler = _fill(disk, leave_kib=4)
    _one_line_full(_cli("report", str(run)), run)
    filler.unlink()


def test_a_read_only_output_directory_ends_in_one_line(disk: Path, tmp_path: Path,
                                                       cli: Callable[..., Done]) -> None:
    run = disk / "run"
    config = _config(tmp_path / "small.yaml", run)
    _cli = cli
    assert _cli("prepare", str(config)).returncode == 0
    subprocess.run(["mount", "-o", "remount,ro", str(disk)], check=True)
    try:
        for args in (("run", str(config), "--resume"), ("train", str(config)),
                     ("report", str(run))):
            done = _cli(*args)
            assert done.returncode == 1, (args, done.stderr[-3000:])
            assert "error: read-only file system writing" in done.stderr, done.stderr[-3000:]
            assert "point output_dir at a writable directory" in done.stderr
            assert "Traceback" not in done.stderr
    finally:
        subprocess.run(["mount", "-o", "remount,rw", str(disk)], check=False)


@pytest.mark.parametrize(("code", "words"), [(28, "the disk is full"),
                                             (30, "read-only file system"),
                                             (13, "permission denied"),
                                             (36, "file name too long")])
def test_each_machine_errno_anywhere_in_the_chain_is_one_line(code: int, words: str,
                                                              tmp_path: Path) -> None:
    """However deep a library wraps it (here: a RuntimeError raised from the OSError), the
    errno becomes one line naming the path and what to do."""
    import os

    from lorapipe.machine_errors import machine_error

    where = tmp_path / ("a" * 300)
    try:
        try:
            raise OSError(code, os.strerror(code), str(where))
        except OSError as err:
            raise RuntimeError("a library's own words") from err
    except RuntimeError as wrapped:
        line = machine_error(wrapped, tmp_path)
    assert line is not None and "\n" not in line
    assert line.startswith(words) and str(where) in line and "run the command again" in line
