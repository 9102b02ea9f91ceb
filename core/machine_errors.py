"""The machine's failures in one line: a full disk, a read-only or forbidden directory,
a path longer than the file system allows.

They surface from many layers and rarely as a plain ``OSError``: safetensors raises
``SafetensorError("... No space left on device (os error 28)")``, pyarrow an ``OSError``
without errno, numpy's ``tofile`` (the GGUF writer) "N requested and M written". So the
exception, its causes and their text are read for the C library's errno or message.
Nothing is lost: every artifact is published atomically, so what failed was never
published, and ``--resume`` after fixing the machine continues where the run stopped.
"""

from __future__ import annotations

import errno
import os
import re
import shutil
from pathlib import Path

# errno → (the C library's message, which Rust/C++ layers quote, and what to do).
# "Permission denied" is matched by errno only: hub and HTTP errors use the words too.
_KNOWN = {
    errno.ENOSPC: ("No space left on device", "free space there or point output_dir at a "
                   "larger disk"),
    errno.EDQUOT: ("Disk quota exceeded", "free space within your quota or point output_dir "
                   "elsewhere"),
    errno.EROFS: ("Read-only file system", "point output_dir at a writable directory"),
    errno.EACCES: (None, "make it writable for this user or point output_dir elsewhere"),
    errno.ENAMETOOLONG: ("File name too long", "choose a shorter output_dir"),
}
_FULL = (errno.ENOSPC, errno.EDQUOT)
# A short write to a file, as numpy reports it without errno: the disk filled up.
_SHORT_WRITE = re.compile(r"^\d+ requested and \d+ written$")


def machine_error(err: BaseException, output_dir: Path | None) -> str | None:
    """One line for a disk/permission failure anywhere in ``err``'s chain, else None."""
    seen: set[int] = set()
    current: BaseException | None = err
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        code = current.errno if isinstance(current, OSError) else None
        if code is None and _SHORT_WRITE.search(str(current)):
            code = errno.ENOSPC  # numpy's tofile (the gguf writer) on a full disk
        for number, (text, fix) in _KNOWN.items():
            if code == number or (text and text in str(current)):
                where = getattr(current, "filename", None)
                return _message(number, fix, Path(where) if isinstance(where, str) else None,
                                output_dir)
        current = current.__cause__ or current.__context__
    return None


def _message(number: int, fix: str, where: Path | None, output_dir: Path | None) -> str:
    target = f" writing {where}" if where else (f" writing in {output_dir}" if output_dir
                                                 else "")
    if number in _FULL:
        probe = where or output_dir or Path.cwd()
        while not os.path.exists(probe) and probe != probe.parent:  # False for a bad path
            probe = probe.parent
        head = f"the disk is full{target} ({shutil.disk_usage(probe).free:,} bytes free on " \
               f"{probe})"
    else:
        head = f"{os.strerror(number).lower()}{target}"
    return f"{head}; {fix}, then run the command again (with --resume for run and train)"
