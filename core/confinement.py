"""A run writes and deletes inside its own directory only, never through a symbolic link.

A link planted inside ``output_dir`` (``RUN/checkpoints`` -> ``/elsewhere``) would make the
run write there, and checkpoint rotation delete there. lorapipe itself never makes links,
so a run directory holding one is refused before any work (``require_no_links``), and
every write and delete under a directory this process holds checks the path again just
before it acts (``check``): a link made while the run works is refused too.

The run directory itself may be reached through links (``runs`` -> a bigger disk): that
is the user's choice of place. Only what lies beneath it must be real directories.
"""

from __future__ import annotations

import contextlib
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

from lorapipe.errors import UserError

_roots: dict[Path, int] = {}  # run directories this process holds, with nesting depth


def _absolute(path: Path) -> Path:
    # abspath, not resolve: the links on the way to the root are the user's to make
    return Path(os.path.abspath(path))


@contextlib.contextmanager
def confined(root: Path) -> Iterator[None]:
    """While held, ``check`` guards every path under ``root``."""
    key = _absolute(root)
    _roots[key] = _roots.get(key, 0) + 1
    try:
        yield
    finally:
        _roots[key] -= 1
        if not _roots[key]:
            del _roots[key]


def _refuse(link: Path) -> UserError:
    try:
        target = os.readlink(link)
    except OSError:
        target = "?"
    return UserError(f"output_dir: {link} is a symbolic link (to {target}); lorapipe never "
                     "writes or deletes through links in a run directory. Remove the link, or "
                     "choose a new output_dir")


def check(path: Path) -> None:
    """Refuse ``path`` if it, or a directory between a held run directory and it, is a link."""
    where = _absolute(path)
    for root in _roots:
        if where == root or root not in where.parents:
            continue
        step = root
        for part in where.relative_to(root).parts:
            step = step / part
            if step.is_symlink():
                raise _refuse(step)


def _links_under(root: Path) -> Iterator[Path]:
    """The symbolic links beneath ``root``, found without following any."""
    for directory, dirnames, filenames in os.walk(root, followlinks=False):
        for name in (*dirnames, *filenames):
            path = Path(directory) / name
            if path.is_symlink():
                yield path


def require_no_links(root: Path) -> None:
    """Refuse a run directory with a link anywhere beneath it, naming one (the walk stops
    there)."""
    link = next(_links_under(root), None)
    if link is not None:
        raise _refuse(link)


def remove_tree(path: Path) -> None:
    """``shutil.rmtree`` after ``check``: never beneath a link, never the link's target."""
    check(path)
    if path.is_symlink():
        path.unlink()
    else:
        shutil.rmtree(path)
