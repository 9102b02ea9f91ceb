"""Encoded data kept as Arrow chunks, and written out as splits, in bounded memory.

A process keeps every page of a memory-mapped Arrow file that it has read resident until
the file is closed; these pages count in its RSS. So nothing here reads all the data in
one process: the stage encodes chunk by chunk, keeps only small per-sample columns
(lengths, flags) in memory, and ``write_splits`` gathers the rows of one chunk at a time.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pyarrow as pa
from datasets import Dataset, concatenate_datasets

from lorapipe.atomic import atomic_directory

# Splits bigger than this are written by worker processes (see ``write_splits``).
SAVE_IN_PROCESS_BYTES = 128 << 20


class EncodedChunks:
    """The encoded chunks of one source and, per chunk, the rows kept (not dropped)."""

    def __init__(self) -> None:
        self.parts: list[Dataset] = []
        self.kept: list[np.ndarray] = []

    def __len__(self) -> int:
        return sum(len(rows) for rows in self.kept)

    def column(self, name: str) -> np.ndarray:
        """A small per-sample column (lengths, flags, strata) of the kept samples, in order."""
        values = [arrow_column(part, name).to_numpy(zero_copy_only=False)[rows]
                  for part, rows in zip(self.parts, self.kept, strict=True)]
        return np.concatenate(values) if values else np.array([])

    def rows(self, positions: np.ndarray) -> list[np.ndarray]:
        """Sorted positions among the kept samples → row numbers within each chunk."""
        starts = np.cumsum([0] + [len(rows) for rows in self.kept])
        return [rows[positions[(positions >= lo) & (positions < hi)] - lo]
                for rows, lo, hi in zip(self.kept, starts[:-1], starts[1:], strict=True)]


def arrow_column(ds: Dataset, name: str) -> pa.ChunkedArray:
    """One column as Arrow: one slice, not a per-row iteration; touches only its pages."""
    return ds.select_columns([name]).with_format("arrow")[:][name]


Splits = dict[str, tuple[EncodedChunks, np.ndarray]]  # split → (source, its positions)


def chunk_jobs(splits: Splits) -> list[tuple[Dataset, dict[str, np.ndarray]]]:
    """Per encoded chunk: the rows of it each split takes."""
    jobs: dict[int, tuple[Dataset, dict[str, np.ndarray]]] = {}
    for split, (source, positions) in splits.items():
        for part, rows in zip(source.parts, source.rows(positions), strict=True):
            jobs.setdefault(id(part), (part, {}))[1][split] = rows
    return list(jobs.values())


def write_splits(jobs: list[tuple[Dataset, dict[str, np.ndarray]]], directory: Path,
                 columns: list[str]) -> None:
    """Write each split (``columns`` of its rows of each chunk) to ``directory/<split>``
    with ``save_to_disk``.

    ``jobs`` must hold the only references to the chunks. Rows are gathered chunk by chunk
    into contiguous files, and a chunk is closed before the next is read: gathering a
    scattered 5% validation sample straight from all the data would touch, and keep
    resident, nearly every page of it. The final copy reads those files in order; when
    they are big, worker processes do it, one shard at a time, so those pages are never
    resident here.
    """
    pieces: dict[str, list[Dataset]] = {"train": [], "validation": []}
    while jobs:
        part, rows_by_split = jobs.pop(0)
        for split, rows in rows_by_split.items():
            if len(rows):
                pieces[split].append(
                    part.select(rows).select_columns(columns).flatten_indices())
        del part
    for split, parts in pieces.items():
        ds = concatenate_datasets(parts)
        big = ds.data.nbytes > SAVE_IN_PROCESS_BYTES
        with atomic_directory(directory / split) as tmp:
            ds.save_to_disk(str(tmp), num_proc=max(2, os.cpu_count() or 1) if big else None,
                            max_shard_size=SAVE_IN_PROCESS_BYTES)
