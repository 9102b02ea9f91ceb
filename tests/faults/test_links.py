"""Links planted in a run directory, and directories lorapipe did not make: nothing outside
the run is written, truncated or deleted, and the user's files inside it survive."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
import yaml

from lorapipe.artifacts import RunPaths
from lorapipe.atomic import atomic_directory, atomic_write_text
from lorapipe.cli import main
from lorapipe.confinement import confined
from lorapipe.errors import UserError
from lorapipe.rundir import LOCK, MARKER, check_location, remove_leftovers
from lorapipe.train.checkpoint import rotate

SAMPLE = Path(__file__).resolve().parents[2] / "configs" / "data" / "quickstart.jsonl"


def _config(tmp_path: Path, run: Path) -> Path:
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump({
        "model": {"name_or_path": "tiny-llama"},
        "data": {"loader": {"name": "jsonl", "path": str(SAMPLE)}},
        "output_dir": str(run),
    }))
    return path


def _snapshot(directory: Path) -> dict[str, bytes]:
    return {str(p.relative_to(directory)): p.read_bytes()
            for p in sorted(directory.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def prepared(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A run directory lorapipe made (marker, lock, data/): copied by each test."""
    base = tmp_path_factory.mktemp("prepared")
    run = base / "run"
    assert main(["prepare", str(_config(base, run))]) == 0
    return run


@pytest.fixture
def victim(tmp_path: Path) -> Path:
    """A directory outside the run that a link points at, with files that must survive."""
    outside = tmp_path / "elsewhere"
    (outside / "step-1").mkdir(parents=True)
    (outside / "step-1" / "precious.bin").write_bytes(b"\x00keep")
    (outside / "step-5").mkdir()
    (outside / "train").mkdir()
    (outside / "train" / "mine.csv").write_text("a,b\n")
    (outside / "notes.txt").write_text("mine")
    (outside / ".prepare-x.tmp").write_text("named like a leftover, but not lorapipe's")
    return outside


def _copy(prepared: Path, tmp_path: Path) -> Path:
    run = tmp_path / "run"
    shutil.copytree(prepared, run)
    return run


def test_a_lock_file_linked_elsewhere_is_refused_not_truncated(
        prepared: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run = _copy(prepared, tmp_path)
    target = tmp_path / "passwords.txt"
    target.write_text("secret\n")
    (run / LOCK).unlink()
    (run / LOCK).symlink_to(target)
    assert main(["run", str(_config(tmp_path, run)), "--resume"]) == 2
    err = capsys.readouterr().err
    assert f"{run / LOCK} is a symbolic link" in err and "Traceback" not in err
    assert target.read_text() == "secret\n"


def test_the_lock_refuses_a_link_even_when_the_scan_is_skipped(tmp_path: Path) -> None:
    """``locked`` alone (the scan runs before it in every command): O_NOFOLLOW."""
    from lorapipe.rundir import locked

    run = tmp_path / "run"
    run.mkdir()
    target = tmp_path / "target.txt"
    target.write_text("secret\n")
    (run / LOCK).symlink_to(target)
    with pytest.raises(UserError, match="is a symbolic link"), locked(run):
        pass
    assert target.read_text() == "secret\n"


@pytest.mark.parametrize("name", ["data", "checkpoints", "eval", "export", "adapter",
                                  "data/train", MARKER, "metrics.jsonl"])
def test_a_linked_artifact_is_refused_before_any_work(
        name: str, prepared: Path, tmp_path: Path, victim: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    run = _copy(prepared, tmp_path)
    link = run / name
    if link.is_dir():
        shutil.rmtree(link)
    elif link.exists():
        link.unlink()
    link.symlink_to(victim / "notes.txt" if name in (MARKER, "metrics.jsonl") else victim)
    before = _snapshot(victim)
    run_before = sorted(str(p.relative_to(run)) for p in run.rglob("*"))
    for command in (["run", "--resume"], ["run", "--overwrite"], ["prepare"]):
        assert main([command[0], str(_config(tmp_path, run)), *command[1:]]) == 2
        err = capsys.readouterr().err
        assert f"{link} is a symbolic link" in err, err
        assert "Traceback" not in err
    assert _snapshot(victim) == before
    assert sorted(str(p.relative_to(run)) for p in run.rglob("*")) == run_before


def test_a_link_planted_while_the_run_works_is_refused_at_each_write_and_delete(
        tmp_path: Path, victim: Path) -> None:
    """The scan runs at every start and stage; the writes and deletes check again."""
    paths = RunPaths(tmp_path / "run")
    paths.root.mkdir()
    paths.checkpoints.symlink_to(victim)
    before = _snapshot(victim)
    with confined(paths.root):
        with pytest.raises(UserError, match="checkpoints is a symbolic link"):
            rotate(paths.checkpoints, keep=1, best_step=None)  # would delete step-1 there
        with pytest.raises(UserError, match="checkpoints is a symbolic link"), \
                atomic_directory(paths.checkpoint(2)) as tmp:
            (tmp / "state.json").write_text("{}")
        with pytest.raises(UserError, match="checkpoints is a symbolic link"):
            atomic_write_text(paths.checkpoints / "notes.txt", "overwritten")
        assert remove_leftovers(paths.root) == []  # never walks into the link
    assert _snapshot(victim) == before
    assert not list(victim.glob(".step-2*"))


def test_a_directory_named_like_a_run_is_not_adopted(tmp_path: Path,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    """No marker: files in directories named like artifacts are the user's."""
    run = tmp_path / "run"
    (run / "data" / "train").mkdir(parents=True)
    (run / "data" / "train" / "mine.csv").write_text("a,b\n")
    (run / "data" / "tokenizer").mkdir()
    (run / "data" / "tokenizer" / "my_notes.txt").write_text("notes")
    (run / "run.json").write_text('{"stages": {}}')
    before = _snapshot(run)
    for command in (["prepare"], ["run", "--overwrite"], ["run", "--resume"]):
        assert main([command[0], str(_config(tmp_path, run)), *command[1:]]) == 2
        err = capsys.readouterr().err
        assert f"is not a lorapipe run (no {MARKER} marker)" in err, err
    assert _snapshot(run) == before
    assert not (run / MARKER).exists()


@pytest.mark.parametrize("where", ["/srv", "/tmp", "/mnt", "/opt", "/home", "/usr/local/run",
                                   "/etc/lorapipe", "/lorapipe-never-made"])
def test_system_directories_are_never_adopted(where: str) -> None:
    with pytest.raises(UserError, match="is a system directory"):
        check_location(Path(where), [])


def test_an_empty_system_directory_is_refused_through_the_cli(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["prepare", str(_config(tmp_path, Path("/lorapipe-never-made")))]) == 2
    assert "is a system directory" in capsys.readouterr().err
    assert not os.path.exists("/lorapipe-never-made")
