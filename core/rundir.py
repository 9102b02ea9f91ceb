"""Owning a run directory: where a run may write, what ``--overwrite`` may delete, and one
process at a time.

lorapipe writes into ``output_dir`` only if it is new, empty, or already lorapipe's (it
holds the marker file lorapipe writes when it claims a directory, or nothing but run
artifacts); never into ``/``, the home directory, the working directory, or a directory
holding the config or the data. ``--overwrite`` removes the run's artifacts
(``RunPaths.artifacts``), never the directory, so a file a user put there survives.

The lock is ``flock`` on a file in the directory: the kernel releases it when the
process dies, however it dies, so a lock can never be left stale; the holder's pid and
host are written into it for the message a second process gets. Whoever takes the lock
first removes what killed runs left half-written (temp files can be gigabytes).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
import socket
from collections.abc import Iterator
from pathlib import Path

from lorapipe import __version__
from lorapipe.artifacts import RunPaths
from lorapipe.errors import UserError

MARKER = ".lorapipe-run"
LOCK = ".lorapipe.lock"

_held: dict[Path, int] = {}  # directories this process has locked, with nesting depth


def check_location(root: Path, protected: list[Path]) -> None:
    """Refuse an ``output_dir`` whose removal or clutter would hurt: ``/``, the home or
    working directory, or one that holds the config or the data."""
    where = root.resolve()
    forbidden = {Path("/"): "the filesystem root", Path.home().resolve(): "your home directory",
                 Path.cwd().resolve(): "the directory lorapipe runs in"}
    if where in forbidden:
        raise UserError(f"output_dir: {root} is {forbidden[where]}; lorapipe writes its run "
                        "there and --overwrite clears it. Use a directory of its own, e.g. "
                        "runs/my-run")
    for path in protected:
        target = path.resolve()
        if where == target or where in target.parents:
            raise UserError(f"output_dir: {root} contains {path}, which the run reads; use a "
                            "directory of its own, e.g. runs/my-run")


def claim(paths: RunPaths) -> None:
    """Create ``output_dir`` or adopt it; refuse a directory holding anything else."""
    root = paths.root
    if (root / MARKER).is_file():
        return
    if root.exists() and not root.is_dir():
        raise UserError(f"output_dir: {root} is a file, not a directory")
    strangers = sorted(p.name for p in root.iterdir()
                       if not _is_ours(p, paths)) if root.is_dir() else []
    if strangers:
        shown = ", ".join(strangers[:5]) + (" ..." if len(strangers) > 5 else "")
        raise UserError(f"output_dir: {root} holds files lorapipe did not write ({shown}); "
                        "choose a new or empty directory for the run")
    root.mkdir(parents=True, exist_ok=True)
    (root / MARKER).write_text(json.dumps({"lorapipe": __version__}) + "\n")


def _is_ours(path: Path, paths: RunPaths) -> bool:
    names = {p.name for p in paths.artifacts()} | {MARKER, LOCK}
    # temp files and directories of interrupted atomic writes: ".<artifact>.<random>.tmp"
    return path.name in names or any(path.name.startswith(f".{n}.") for n in names)


def clear(paths: RunPaths) -> None:
    """``--overwrite``: remove the run's artifacts (and their interrupted temp copies)."""
    for path in paths.root.iterdir():
        if path.name in (MARKER, LOCK) or not _is_ours(path, paths):
            continue
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        else:
            path.unlink()


def _is_leftover(name: str) -> bool:
    """What an interrupted write leaves (atomic.py, the prepare stage's work directory)."""
    return name.startswith(".") and (name.endswith((".tmp", ".old"))
                                     or name.startswith(".prepare-"))


def remove_leftovers(root: Path) -> list[Path]:
    """Delete the temp files and directories of writes a killed process never finished.

    Safe only with the lock held: then no other process is writing here.
    """
    removed: list[Path] = []
    for path in sorted(root.rglob(".*")):
        if not _is_leftover(path.name) or any(p in removed for p in path.parents):
            continue
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)
        removed.append(path)
    return removed


@contextlib.contextmanager
def locked(root: Path) -> Iterator[None]:
    """Hold the run directory's lock; a second process gets a user error naming the holder.

    Re-entrant within a process (``lorapipe run`` holds it while each stage takes it too).
    """
    key = root.resolve()
    if key in _held:
        _held[key] += 1
        try:
            yield
        finally:
            _held[key] -= 1
        return
    handle = open(root / LOCK, "a+", encoding="utf-8")  # noqa: SIM115 - held until release
    try:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip() or "another process"
            raise UserError(f"output_dir: {root} is in use by {holder}; wait for it to finish "
                            "or use another output_dir") from None
        handle.seek(0)
        handle.truncate()
        handle.write(f"lorapipe pid {os.getpid()} on {socket.gethostname()}\n")
        handle.flush()
        _held[key] = 1
        try:
            yield
        finally:
            del _held[key]
            handle.truncate(0)
            fcntl.flock(handle, fcntl.LOCK_UN)
    finally:
        handle.close()
