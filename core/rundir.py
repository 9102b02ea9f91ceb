"""Owning a run directory: where a run may write, what ``--overwrite`` may delete, and one
process at a time.

lorapipe writes into ``output_dir`` only if it is new, empty, or already lorapipe's (it
holds the marker file lorapipe writes when it claims a directory); never into ``/``, a
system directory (``/srv``, ``/usr/...``), the home directory, the working directory, or
a directory holding the config or the data. A directory of files that merely look like
run artifacts is not adopted: its ``data/`` could be the user's. ``--overwrite`` removes
the run's artifacts (``RunPaths.artifacts``), never the directory, so a file a user put
there survives; and a file a user put inside a published artifact directory, which its
manifest does not list, stops every command before anything replaces or deletes that
directory (``require_only_ours``). Nothing is written or deleted through a link
(``confinement.py``).

The lock is ``flock`` on a file in the directory: the kernel releases it when the
process dies, however it dies, so a lock can never be left stale; the holder's pid and
host are written into it for the message a second process gets. It is opened without
following links, so a lock path linked elsewhere is refused, never truncated. Whoever
takes the lock first removes what killed runs left half-written (temp files can be
gigabytes).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
import socket
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import TextIO

from lorapipe import __version__
from lorapipe.artifacts import RunPaths
from lorapipe.atomic import atomic_write_text
from lorapipe.confinement import check, remove_tree
from lorapipe.errors import UserError
from lorapipe.manifest import MANIFEST, unlisted

MARKER = ".lorapipe-run"
LOCK = ".lorapipe.lock"

_held: dict[Path, int] = {}  # directories this process has locked, with nesting depth


# Trees of the operating system: no run belongs anywhere inside them.
_SYSTEM_TREES = tuple(Path(p) for p in ("/bin", "/boot", "/dev", "/etc", "/lib", "/lib32",
                                        "/lib64", "/libx32", "/proc", "/sbin", "/sys", "/usr"))


def _system_directory(where: Path) -> bool:
    """A directory of the filesystem's top level (``/srv``, ``/tmp``, ``/home``), or inside
    one of the operating system's own trees."""
    return where.parent == Path("/") or any(t == where or t in where.parents
                                           for t in _SYSTEM_TREES)


def check_location(root: Path, protected: list[Path]) -> None:
    """Refuse an ``output_dir`` whose removal or clutter would hurt: ``/``, a system
    directory, the home or working directory, or one that holds the config or the data."""
    where = root.resolve()
    forbidden = {Path("/"): "the filesystem root", Path.home().resolve(): "your home directory",
                 Path.cwd().resolve(): "the directory lorapipe runs in"}
    if where in forbidden or _system_directory(where):
        what = forbidden.get(where, "a system directory")
        raise UserError(f"output_dir: {root} is {what}; lorapipe writes its run "
                        "there and --overwrite clears it. Use a directory of its own, e.g. "
                        "runs/my-run")
    for path in protected:
        target = path.resolve()
        if where == target or where in target.parents:
            raise UserError(f"output_dir: {root} contains {path}, which the run reads; use a "
                            "directory of its own, e.g. runs/my-run")


def claim(paths: RunPaths) -> None:
    """Create ``output_dir`` or take an empty one; refuse a directory lorapipe did not make.

    Only the marker says a directory is lorapipe's: files named like artifacts do not
    (``data/train/mine.csv`` would be deleted when prepare publishes ``data/train``).
    """
    root = paths.root
    marker = root / MARKER
    if marker.is_file() and not marker.is_symlink():
        return
    if root.exists() and not root.is_dir():
        raise UserError(f"output_dir: {root} is a file, not a directory")
    found = sorted(p.name for p in root.iterdir()) if root.is_dir() else []
    if found:
        shown = ", ".join(found[:5]) + (" ..." if len(found) > 5 else "")
        raise UserError(f"output_dir: {root} holds files and is not a lorapipe run (no "
                        f"{MARKER} marker): {shown}. Choose a new or empty directory for the run")
    root.mkdir(parents=True, exist_ok=True)
    atomic_write_text(marker, json.dumps({"lorapipe": __version__}) + "\n")


def _is_ours(path: Path, paths: RunPaths) -> bool:
    names = {p.name for p in paths.artifacts()} | {MARKER, LOCK}
    # temp files and directories of interrupted atomic writes: ".<artifact>.<random>.tmp"
    return path.name in names or any(path.name.startswith(f".{n}.") for n in names)


def clear(paths: RunPaths) -> None:
    """``--overwrite``: remove the run's artifacts (and their interrupted temp copies)."""
    for path in paths.root.iterdir():
        if path.name in (MARKER, LOCK) or not _is_ours(path, paths):
            continue
        if path.is_dir():
            remove_tree(path)
        else:
            check(path)
            path.unlink()


# The stage whose finishing writes each manifest-carrying artifact's manifest last; until it
# is done the manifest may be missing or an earlier run's, so the directory is not judged.
_PUBLISHED_BY = {"data": "prepare", "adapter": "train", "merged": "merge", "export": "export"}


def require_only_ours(paths: RunPaths) -> None:
    """Refuse a run whose published artifact directories hold a file their manifest does
    not list: lorapipe replaces and deletes those directories whole (a new prepare, a
    checkpoint rotated out, ``--overwrite``), and deletes only what it wrote."""
    foreign = next(_foreign_files(paths), None)
    if foreign is not None:
        file, manifest = foreign
        raise UserError(f"output_dir: {file} is not a file lorapipe wrote ({manifest} does not "
                        "list it), and lorapipe deletes only what it wrote; move it out of "
                        "the run directory, then run again")


def _foreign_files(paths: RunPaths) -> Iterator[tuple[Path, Path]]:
    """Each unlisted file in a published directory, with the manifest that omits it."""
    try:
        stages = json.loads(paths.run_json.read_text()).get("stages", {})
        done = {name for name, stage in stages.items() if stage.get("status") == "done"}
    except (OSError, ValueError, AttributeError):  # no run.json yet, or a damaged one
        done = set()
    directories = sorted(paths.checkpoints.glob("step-*"))  # each published whole, atomically
    for name, stage in _PUBLISHED_BY.items():
        if stage in done:
            top = paths.root / name
            directories += sorted(top.iterdir()) if name == "export" and top.is_dir() else [top]
    for directory in directories:  # without a readable manifest the stage reruns it
        for file in unlisted(directory):
            yield file, directory / MANIFEST


def _is_leftover(name: str) -> bool:
    """What an interrupted write leaves (atomic.py, the prepare stage's work directory)."""
    return name.startswith(".") and (name.endswith((".tmp", ".old"))
                                     or name.startswith(".prepare-"))


def remove_leftovers(root: Path) -> list[Path]:
    """Delete the temp files and directories of writes a killed process never finished.

    Safe only with the lock held: then no other process is writing here.
    """
    removed: list[Path] = []
    for directory, dirnames, filenames in os.walk(root, followlinks=False):
        for name in [*dirnames, *filenames]:
            path = Path(directory) / name
            if not _is_leftover(name):
                continue
            check(path)
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path, ignore_errors=True)
            else:
                path.unlink(missing_ok=True)
            removed.append(path)
        dirnames[:] = [d for d in dirnames if not _is_leftover(d)]  # gone: nothing to walk
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
    handle = _open_lock(root / LOCK)
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


def _open_lock(path: Path) -> TextIO:
    """The lock file, opened without following a link and only if it is a plain file:
    a lock path linked to a file elsewhere would otherwise truncate that file."""
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)
    except OSError:
        if path.is_symlink():
            raise UserError(f"output_dir: {path} is a symbolic link; lorapipe's lock is a "
                            "plain file it makes itself. Remove the link") from None
        raise
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise UserError(f"output_dir: {path} is not a plain file; remove it (lorapipe makes "
                        "its lock itself)")
    return os.fdopen(fd, "r+", encoding="utf-8")
