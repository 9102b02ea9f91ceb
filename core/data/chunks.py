"""Encoded data kept as Arrow chunks, and written out as splits, in bounded memory.

A process keeps every page of a memory-mapped Arrow file that it has read resident until
the file is closed; these pages count in its RSS. So nothing here reads all the data in
one process: worker processes encode batch by batch into Arrow files, the stage keeps only
small per-sample columns (lengths, flags) in memory and the files closed, and
``write_splits`` gathers the rows of one chunk (consecutive files) at a time.
"""

from __future__ import annotations

import os
import uuid
from contextlib import ExitStack
from pathlib import Path

import numpy as np
import pyarrow as pa
from datasets import Dataset, Features
from datasets.arrow_writer import ArrowWriter

from lorapipe.atomic import atomic_directory

# Splits bigger than this are copied to their final files by worker processes (see
# ``write_splits``); those are spawned and import datasets anew, seconds of CPU each, so
# smaller splits are copied here: their pages stay resident here until the copy ends.
SAVE_IN_PROCESS_BYTES = 512 << 20
# Most bytes a file of a saved split holds.
_SHARD_BYTES = 128 << 20
# Rows gathered into memory at once while writing a split.
_TAKE_ROWS = 10_000


class EncodedChunks:
    """The encoded samples of one source as chunks of about ``chunk_bytes``, each a list
    of Arrow files (read in order, a chunk's files are its samples in order), with the
    small per-sample columns the report and the split need held in memory, so that no
    file is open until its rows are written."""

    def __init__(self, columns: list[str], chunk_bytes: int) -> None:
        self.names = columns
        self.chunk_bytes = chunk_bytes
        self.files: list[list[str]] = []
        self.sizes: list[int] = []
        self.columns: list[dict[str, np.ndarray]] = []
        self._open: tuple[list[str], list[dict[str, np.ndarray]]] = ([], [])
        self._open_bytes = 0

    def add(self, path: str | None, nbytes: int, columns: dict[str, np.ndarray]) -> None:
        """The next file (``None`` for none: no samples) and its samples' ``columns``."""
        if path is not None:
            self._open[0].append(path)
            self._open[1].append(columns)
            self._open_bytes += nbytes
        if self._open_bytes >= self.chunk_bytes:
            self.end_chunk()

    def end_chunk(self) -> None:
        files, columns = self._open
        if files:
            self.files.append(files)
            self.columns.append({name: np.concatenate([c[name] for c in columns])
                                 for name in self.names})
            self.sizes.append(len(self.columns[-1][self.names[0]]))
        self._open = ([], [])
        self._open_bytes = 0

    def __len__(self) -> int:
        return sum(self.sizes)

    def column(self, name: str) -> np.ndarray:
        """A small per-sample column, in order."""
        if not self.columns:  # every record dropped
            return np.zeros(0, dtype=np.int64)
        return np.concatenate([columns[name] for columns in self.columns])

    def rows(self, positions: np.ndarray) -> list[np.ndarray]:
        """Sorted positions among the samples → row numbers within each chunk."""
        starts = np.cumsum([0] + self.sizes)
        return [positions[(positions >= lo) & (positions < hi)] - lo
                for lo, hi in zip(starts[:-1], starts[1:], strict=True)]


Splits = dict[str, tuple[EncodedChunks, np.ndarray]]  # split → (source, its positions)


def chunk_jobs(splits: Splits) -> list[tuple[list[str], dict[str, np.ndarray]]]:
    """Per encoded chunk (its files): the rows of it each split takes."""
    jobs: dict[str, tuple[list[str], dict[str, np.ndarray]]] = {}
    for split, (source, positions) in splits.items():
        for files, rows in zip(source.files, source.rows(positions), strict=True):
            if len(rows):
                jobs.setdefault(files[0], (files, {}))[1][split] = rows
    return list(jobs.values())


def write_splits(splits: Splits, directory: Path, features: Features, work: Path) -> None:
    """Write each split (the ``features`` columns of its rows of each chunk) to
    ``directory/<split>`` with ``save_to_disk``; ``work`` holds the intermediate files.

    A split's rows are gathered chunk by chunk (Arrow ``take``) into one contiguous file,
    and a chunk is closed before the next is opened: gathering a scattered 5% validation
    sample straight from all the data would touch, and keep resident, nearly every page of
    it. The final copy reads those files in order; when they are big, worker processes do
    it, one shard at a time, so those pages are never resident here.
    """
    jobs = chunk_jobs(splits)
    files = {split: work / f"{split}-{uuid.uuid4().hex}.arrow" for split in splits}
    with ExitStack() as stack:
        writers = {split: stack.enter_context(ArrowWriter(features=features, path=str(path)))
                   for split, path in files.items()}
        for chunk, rows_by_split in jobs:
            table = pa.concat_tables([Dataset.from_file(f).data.table for f in chunk])
            table = table.select(list(features))
            for split, rows in rows_by_split.items():
                for start in range(0, len(rows), _TAKE_ROWS):
                    writers[split].write_table(table.take(rows[start:start + _TAKE_ROWS]))
            del table
        for writer in writers.values():
            writer.finalize()
    for split, path in files.items():
        ds = Dataset.from_file(str(path))
        big = ds.data.nbytes > SAVE_IN_PROCESS_BYTES
        with atomic_directory(directory / split) as tmp:
            ds.save_to_disk(str(tmp), num_proc=max(2, os.cpu_count() or 1) if big else None,
                            max_shard_size=_SHARD_BYTES)
