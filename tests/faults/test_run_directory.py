"""The run directory is lorapipe's alone: where it may write, what --overwrite may delete,
and one process at a time."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from lorapipe.artifacts import RunPaths
from lorapipe.cli import main
from lorapipe.errors import UserError
from lorapipe.rundir import LOCK, MARKER, claim, clear

SAMPLE = Path(__file__).resolve().parents[2] / "configs" / "data" / "quickstart.jsonl"


def _config(path: Path, output_dir: str, data: Path = SAMPLE) -> Path:
    path.write_text(yaml.safe_dump({
        "model": {"name_or_path": "tiny-llama"},
        "data": {"loader": {"name": "jsonl", "path": str(data)}},
        "output_dir": output_dir,
    }))
    return path


def test_a_project_folder_is_never_written_into_nor_cleared(tmp_path: Path, capsys,
                                                            monkeypatch) -> None:  # noqa: ANN001
    """output_dir: . in a project folder (the config, the data and notes beside it)."""
    project = tmp_path / "project"
    project.mkdir()
    data = project / "data.jsonl"
    data.write_bytes(SAMPLE.read_bytes())
    (project / "notes.txt").write_text("mine")
    config = _config(project / "run.yaml", ".", data)
    monkeypatch.chdir(project)
    before = sorted(p.name for p in project.iterdir())
    assert main(["run", str(config), "--overwrite"]) == 2
    assert "the directory lorapipe runs in" in capsys.readouterr().err
    monkeypatch.chdir(tmp_path)
    config = _config(project / "run.yaml", str(project), data)
    assert main(["prepare", str(config)]) == 2
    assert "contains" in capsys.readouterr().err
    assert sorted(p.name for p in project.iterdir()) == before


@pytest.mark.parametrize("where", ["/", "~"])
def test_root_and_home_are_refused(where: str, tmp_path: Path, capsys, monkeypatch) -> None:  # noqa: ANN001
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    (tmp_path / "home").mkdir()
    config = _config(tmp_path / "run.yaml", where)
    assert main(["prepare", str(config)]) == 2
    err = capsys.readouterr().err
    assert "filesystem root" in err or "home directory" in err
    assert list((tmp_path / "home").iterdir()) == []


def test_a_directory_of_other_files_is_refused(tmp_path: Path, capsys) -> None:  # noqa: ANN001
    other = tmp_path / "photos"
    other.mkdir()
    (other / "cat.jpg").write_bytes(b"\xff\xd8")
    assert main(["prepare", str(_config(tmp_path / "run.yaml", str(other)))]) == 2
    assert f"is not a lorapipe run (no {MARKER} marker): cat.jpg" in capsys.readouterr().err
    assert [p.name for p in other.iterdir()] == ["cat.jpg"]


def test_home_and_variables_are_expanded(tmp_path: Path, monkeypatch) -> None:  # noqa: ANN001
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setenv("RUNS", "runs")
    monkeypatch.chdir(tmp_path)
    assert main(["prepare", str(_config(tmp_path / "run.yaml", "~/$RUNS/x"))]) == 0
    assert (tmp_path / "home" / "runs" / "x" / "data" / "report.json").is_file()
    assert not (tmp_path / "~").exists()


def test_overwrite_removes_only_the_run_artifacts(tmp_path: Path) -> None:
    paths = RunPaths(tmp_path / "run")
    claim(paths)
    for directory in (paths.data, paths.checkpoints / "step-1", paths.merged):
        directory.mkdir(parents=True)
        (directory / "x").write_text("x")
    paths.run_json.write_text("{}")
    (paths.root / ".adapter.abc.tmp").mkdir()  # what a killed atomic write leaves
    (paths.root / "notes.txt").write_text("the user's")
    clear(paths)
    assert sorted(p.name for p in paths.root.iterdir()) == [MARKER, "notes.txt"]


def test_a_directory_of_run_artifacts_without_the_marker_is_not_adopted(tmp_path: Path) -> None:
    """Names alone do not make a directory lorapipe's: its data/ could be the user's."""
    paths = RunPaths(tmp_path / "old-run")
    paths.data.mkdir(parents=True)
    paths.run_json.write_text(json.dumps({"stages": {}}))
    with pytest.raises(UserError, match="is not a lorapipe run"):
        claim(paths)
    assert not (paths.root / MARKER).exists()
    assert sorted(p.name for p in paths.root.iterdir()) == ["data", "run.json"]


HOLD = """
import sys, time
from pathlib import Path
from lorapipe.rundir import claim, locked
from lorapipe.artifacts import RunPaths
paths = RunPaths(Path(sys.argv[1]))
claim(paths)
with locked(paths.root):
    print("locked", flush=True)
    time.sleep(120)
"""


def test_a_second_process_is_refused_until_the_first_dies(tmp_path: Path, capsys) -> None:  # noqa: ANN001
    run = tmp_path / "run"
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(run)], stdout=subprocess.PIPE,
                              text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        config = _config(tmp_path / "run.yaml", str(run))
        assert main(["prepare", str(config)]) == 2
        err = capsys.readouterr().err
        assert f"is in use by lorapipe pid {holder.pid}" in err
        assert not (run / "data").exists()
    finally:
        os.kill(holder.pid, signal.SIGKILL)  # kill -9: the kernel releases the lock
        holder.wait()
    deadline = time.monotonic() + 10
    while main(["prepare", str(config)]) != 0:  # no stale lock is left behind
        assert time.monotonic() < deadline, capsys.readouterr().err
    assert (run / LOCK).is_file() and (run / "data" / "report.json").is_file()


def test_sigterm_outside_training_records_the_stage_as_interrupted(tmp_path: Path) -> None:
    """A scheduler's SIGTERM during prepare: exit 130 and run.json says "interrupted"
    (not "running" forever)."""
    data = tmp_path / "big.jsonl"
    with data.open("w") as handle:
        for n in range(60_000):
            handle.write(json.dumps({"messages": [
                {"role": "user", "content": f"Question number {n}: what is {n} plus {n}?"},
                {"role": "assistant", "content": f"{n} plus {n} is {2 * n}."}]}) + "\n")
    config = _config(tmp_path / "run.yaml", str(tmp_path / "run"), data)
    process = subprocess.Popen([sys.executable, "-m", "lorapipe.cli", "prepare", str(config)],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    run_json = tmp_path / "run" / "run.json"
    deadline = time.monotonic() + 60
    while not (run_json.is_file() and "running" in run_json.read_text()):
        assert time.monotonic() < deadline and process.poll() is None
        time.sleep(0.1)
    time.sleep(1.0)  # inside the stage's work
    process.send_signal(signal.SIGTERM)
    _, err = process.communicate(timeout=60)
    assert process.returncode == 130, err
    assert json.loads(run_json.read_text())["stages"]["prepare"]["status"] == "interrupted"
    assert "Traceback" not in err


def test_what_killed_runs_left_half_written_is_removed_at_the_next_start(tmp_path: Path) -> None:
    run = tmp_path / "run"
    config = _config(tmp_path / "run.yaml", str(run))
    assert main(["prepare", str(config)]) == 0
    leftovers = [run / ".merged.k3j2.tmp", run / "data" / ".prepare-x81", run / ".adapter.old",
                 run / "export" / "gguf" / ".model-q8_0.gguf.123.tmp"]
    for path in leftovers:
        path.parent.mkdir(parents=True, exist_ok=True)
        if path.suffix == ".tmp" and "gguf" in path.name:
            path.write_bytes(b"partial")
        else:
            path.mkdir()
            (path / "weights").write_bytes(b"partial")
    (run / "notes.txt").write_text("kept")
    assert main(["prepare", str(config)]) == 0
    assert not [p for p in leftovers if p.exists()]
    assert (run / "notes.txt").read_text() == "kept"


def test_outputs_get_the_users_umask(tmp_path: Path) -> None:
    """Atomic writes go through mkstemp/mkdtemp (0600/0700); the published files must
    not stay private: a shared group or a serving process reads them."""
    previous = os.umask(0o022)
    try:
        assert main(["prepare", str(_config(tmp_path / "run.yaml", str(tmp_path / "run")))]) == 0
    finally:
        os.umask(previous)
    run = tmp_path / "run"
    for path in (run / "run.json", run / "config.resolved.yaml", run / "data" / "report.json"):
        assert path.stat().st_mode & 0o777 == 0o644, path
    for path in (run / "data" / "train", run / "data" / "tokenizer"):
        assert path.stat().st_mode & 0o777 == 0o755, path


def test_a_full_disk_says_so_in_one_line(tmp_path: Path) -> None:
    """output_dir on a 300 KiB tmpfs: prepare runs out of space; one line names the disk
    and the free bytes, exit 1, no traceback."""
    small = tmp_path / "small"
    small.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=300k", "tmpfs", str(small)],
                             capture_output=True, text=True, check=False)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here: {mounted.stderr.strip()}")
    try:
        config = _config(tmp_path / "run.yaml", str(small / "run"))
        done = subprocess.run([sys.executable, "-m", "lorapipe.cli", "prepare", str(config)],
                              capture_output=True, text=True, check=False)
        assert done.returncode == 1, done.stderr[-2000:]
        assert "error: the disk is full" in done.stderr and f"bytes free on {small}" in done.stderr
        assert "Traceback" not in done.stderr
    finally:
        subprocess.run(["umount", str(small)], check=False)


def test_a_finished_run_holds_only_files_its_manifests_list(finished_run: Path) -> None:
    from lorapipe.rundir import _foreign_files

    assert list(_foreign_files(RunPaths(finished_run))) == []


def test_a_users_file_in_an_artifact_directory_stops_the_run_and_nothing_is_deleted(
        finished_run: Path, tmp_path: Path) -> None:
    """lorapipe deletes only what a manifest lists: a file dropped into a published
    directory (which a new prepare, a checkpoint rotation or --overwrite would delete
    whole) is named, and every command stops before touching anything."""
    import shutil

    from quickstart_run import run_quickstart

    from lorapipe.rundir import _foreign_files

    run = tmp_path / "run"
    shutil.copytree(finished_run, run)
    step = sorted((run / "checkpoints").iterdir())[0].name
    planted = ["data/train/mine.csv", "data/tokenizer/my_notes.txt", "adapter/notes.md",
               "merged/extra/readme.txt", f"checkpoints/{step}/mine.txt",
               "export/gguf/notes.txt"]
    for name in planted:
        (run / name).parent.mkdir(parents=True, exist_ok=True)
        (run / name).write_text("the user's")
    assert sorted(str(f.relative_to(run)) for f, _ in _foreign_files(RunPaths(run))) == \
        sorted(planted)
    before = sorted(str(p.relative_to(run)) for p in run.rglob("*"))
    for flag in ("--overwrite", "--resume"):
        done = run_quickstart(run, flag)
        assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr[-2000:]
        [line] = [line for line in done.stderr.splitlines() if line.startswith("error:")]
        assert "is not a file lorapipe wrote" in line and "move it out" in line
        assert sorted(str(p.relative_to(run)) for p in run.rglob("*")) == before
    for name in planted:
        (run / name).unlink()
    done = run_quickstart(run, "--resume", "--allow-config-change")  # output_dir moved
    assert done.returncode == 0, done.stderr[-2000:]
