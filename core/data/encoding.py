"""Reading, templating and tokenizing one source for ``prepare`` (see ``stage.py``), with
bounded memory: this process reads, validates and deduplicates (the dedupe index needs
every record in one place) while forked workers template and tokenize batches of
``_BATCH`` records, each writing its samples to an Arrow file and sending back only small
per-sample columns.
"""

from __future__ import annotations

import ctypes
import gc
import json
import multiprocessing
import os
import signal
import sys
import tempfile
import uuid
from collections import Counter, deque
from collections.abc import Iterator
from contextlib import ExitStack
from itertools import chain, islice
from multiprocessing.pool import AsyncResult, Pool
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

import numpy as np
import pyarrow as pa
from datasets import Features, Sequence, Value
from datasets.arrow_writer import ArrowWriter
from tqdm.auto import tqdm

from lorapipe.components import ChatTemplate, Loader, RecordError
from lorapipe.config import DataConfig
from lorapipe.data.chunks import EncodedChunks
from lorapipe.data.cleaning import dedupe_key, validate
from lorapipe.data.report import DropLog
from lorapipe.data.samples import ORIGINS, Sample, encode_records
from lorapipe.data.schemas import conversation_id, to_record

if TYPE_CHECKING:
    from lorapipe.data.near_duplicates import NearDuplicates

OUTPUT_FEATURES = Features({
    "input_ids": Sequence(Value("int32")), "attention_mask": Sequence(Value("int8")),
    "labels": Sequence(Value("int32")),
    # a preference pair's rejected side (input_ids/labels hold the chosen one); empty else
    "rejected_input_ids": Sequence(Value("int32")), "rejected_labels": Sequence(Value("int32")),
    # an unpaired reply's label: 1 desirable, 0 undesirable; -1 for every other sample
    "desirable": Value("int8"),
    "messages": Value("string"), "tools": Value("string"),
    "kind": Value("string"), "source": Value("string"), "conversation_id": Value("string"),
})
# Records a worker templates and tokenizes at once (one task, one Arrow file): big enough
# that the per-task cost (pickling the batch, opening a file) is small, small enough that
# the last tasks leave no core idle for long.
_BATCH = 2000
# Encoded bytes per chunk of the encoded data (see ``chunks.py``).
_CHUNK_BYTES = 96 << 20

# --- reading --------------------------------------------------------------------------


def _raw_rows(loader: Loader, data: DataConfig, log: DropLog, seen: dict[bytes, str],
              near: NearDuplicates | None) -> Iterator[dict[str, str]]:
    """Canonical, valid, not-yet-seen records; everything else goes to ``log``."""
    field = data.validation.stratify_by
    # Workers tokenize at most a few batches behind the reading, so this bar shows both.
    for record in tqdm(loader.records(), desc="reading + tokenizing", unit=" rec"):
        log.read += 1
        if record.error is not None:
            log.drop(record.error.reason, record.location, record.error.detail)
            continue
        try:
            canonical = to_record(record.data, data.format, data.columns)
            conversation = conversation_id(record.data, data.columns)
            validate(canonical, data.max_length, truncating=data.length_strategy != "drop",
                     min_response_chars=data.min_response_chars)
        except RecordError as err:
            log.drop(err.reason, record.location, err.detail)
            continue
        if data.dedupe:
            key = dedupe_key(canonical)
            if key in seen:
                log.drop("duplicate", record.location, f"same record as {seen[key]}")
                continue
            seen[key] = record.location
        twin = near.twin(canonical, record.location) if near is not None else None
        if twin is not None:
            log.drop("near_duplicate", record.location, f"nearly the same record as {twin}")
            continue
        stratum = str(record.data.get(field, "(missing)")) if field else ""
        yield {"record": canonical, "source": record.location, "stratum": stratum,
               "conversation": conversation}


def _batches(rows: Iterator[dict[str, Any]], size: int) -> Iterator[dict[str, list[Any]]]:
    while chunk := list(islice(rows, size)):
        yield {name: [row[name] for row in chunk] for name in chunk[0]}


# --- templating -----------------------------------------------------------------------


def _list_array(rows: np.ndarray, offsets: np.ndarray) -> pa.ListArray:
    return pa.ListArray.from_arrays(pa.array(offsets), pa.array(rows))


Drop = tuple[str, str, str]  # reason, location, detail


def _encode_batch(batch: dict[str, list[Any]], template: ChatTemplate, tokenizer: Any,
                  data: DataConfig) -> tuple[pa.Table, dict[str, np.ndarray], list[Drop]]:
    """Encode one batch of records: the samples as an Arrow table, their small
    per-sample columns (lengths, flags), and the drops in order.

    The Arrow columns are built from flat numpy arrays: converting per-token Python lists
    to Arrow one by one would cost as much as tokenizing.
    """
    outcomes = encode_records(batch["record"], template, tokenizer, data)
    kept: list[int] = []  # the record of each sample
    samples: list[Sample] = []
    drops: list[Drop] = []
    for i, outcome in enumerate(outcomes):
        if isinstance(outcome, RecordError):
            drops.append((outcome.reason, batch["source"][i], outcome.detail))
            continue
        kept += [i] * len(outcome)
        samples += outcome
    lengths = np.fromiter((len(s.encoded.input_ids) for s in samples), dtype=np.int32,
                          count=len(samples))
    offsets = np.zeros(len(lengths) + 1, dtype=np.int32)
    np.cumsum(lengths, out=offsets[1:])
    total = int(offsets[-1])
    ids = np.fromiter(chain.from_iterable(s.encoded.input_ids for s in samples),
                      dtype=np.int32, count=total)
    trained = np.fromiter(chain.from_iterable(s.encoded.trainable for s in samples),
                          dtype=bool, count=total)
    trained_before = np.concatenate([[0], np.cumsum(trained, dtype=np.int32)])
    rejected = _rejected_columns(samples)
    conversations = [batch["conversation"][i] for i in kept]
    per_record = Counter(kept)
    table = pa.Table.from_pydict({
        "input_ids": _list_array(ids, offsets),
        "attention_mask": _list_array(np.ones(total, dtype=np.int8), offsets),
        "labels": _list_array(np.where(trained, ids, np.int32(-100)), offsets),
        **rejected,
        "desirable": pa.array([-1 if s.record.desirable is None else int(s.record.desirable)
                               for s in samples], pa.int8()),
        "messages": pa.array([s.record.json() for s in samples], pa.string()),
        "tools": pa.array([json.dumps(s.record.tools, ensure_ascii=False)
                           if s.record.tools else None for s in samples], pa.string()),
        "kind": pa.array([s.record.kind for s in samples], pa.string()),
        "source": pa.array([batch["source"][i] for i in kept], pa.string()),
        "conversation_id": pa.array(conversations, pa.string()),
    }, schema=OUTPUT_FEATURES.arrow_schema)
    rejected_lengths = np.diff(rejected["rejected_input_ids"].offsets.to_numpy())
    rejected_trained = np.fromiter((sum(s.rejected.trainable) if s.rejected else 0
                                    for s in samples), dtype=np.int64, count=len(samples))
    columns = {
        "n_tokens": lengths + rejected_lengths,
        "n_trainable": (trained_before[offsets[1:]] - trained_before[offsets[:-1]]
                        + rejected_trained),
        "truncated": np.array([s.truncated for s in samples], dtype=bool),
        "origin": np.array([ORIGINS.index(s.origin) for s in samples], dtype=np.int8),
        # the samples of one record stay together on one side of every split
        "conversation": np.array([c if c is not None or per_record[i] == 1
                                  else f"\0{batch['source'][i]}"
                                  for c, i in zip(conversations, kept, strict=True)],
                                 dtype=object),
    }
    if data.validation.stratify_by:
        columns["stratum"] = np.array([batch["stratum"][i] for i in kept], dtype=object)
    return table, columns, drops


def _rejected_columns(samples: list[Sample]) -> dict[str, pa.ListArray]:
    """The rejected side of each preference pair (empty lists for every other sample)."""
    sides = [s.rejected for s in samples]
    lengths = np.array([len(r.input_ids) if r else 0 for r in sides], dtype=np.int32)
    offsets = np.zeros(len(lengths) + 1, dtype=np.int32)
    np.cumsum(lengths, out=offsets[1:])
    ids = np.fromiter(chain.from_iterable(r.input_ids for r in sides if r), dtype=np.int32,
                      count=int(offsets[-1]))
    trained = np.fromiter(chain.from_iterable(r.trainable for r in sides if r), dtype=bool,
                          count=int(offsets[-1]))
    return {"rejected_input_ids": _list_array(ids, offsets),
            "rejected_labels": _list_array(np.where(trained, ids, np.int32(-100)), offsets)}


class _Encoded(NamedTuple):
    """What encoding one batch gives back: the Arrow file of its kept samples (``None``
    when none was kept) and its size, their small per-sample columns, and the drops."""

    path: str | None
    nbytes: int
    columns: dict[str, np.ndarray]
    drops: list[Drop]


class Encoder:
    """Encodes one batch and writes its kept samples to an Arrow file in ``work``.

    Built before the worker processes fork, so they inherit the tokenizer and template
    instead of unpickling them for every batch.
    """

    def __init__(self, template: ChatTemplate, tokenizer: Any, data: DataConfig,
                 work: Path) -> None:
        self.template, self.tokenizer, self.data, self.work = template, tokenizer, data, work

    def __call__(self, batch: dict[str, list[Any]]) -> _Encoded:
        table, columns, drops = _encode_batch(batch, self.template, self.tokenizer, self.data)
        if not len(table):
            return _Encoded(None, 0, columns, drops)
        path = str(self.work / f"encoded-{uuid.uuid4().hex}.arrow")
        with ArrowWriter(features=OUTPUT_FEATURES, path=path) as writer:
            writer.write_table(table)
            writer.finalize()
        return _Encoded(path, table.nbytes, columns, drops)


_worker_encoder: Encoder | None = None  # set in each worker process by _start_worker


_PR_SET_PDEATHSIG = 1  # linux/prctl.h


def _start_worker(encoder: Encoder) -> None:
    global _worker_encoder
    _worker_encoder = encoder
    # The pool stops its workers with SIGTERM; the handler the pipeline installs for the
    # main process (record the stage as interrupted, exit) is not theirs to run.
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    # When the main process ends at once (SIGTERM: os._exit), a worker that outlived it
    # would find the result pipe broken and print a traceback: Linux ends it with it.
    if sys.platform == "linux":
        ctypes.CDLL(None).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    # What the worker inherited (torch, transformers: a million objects) lives as long as
    # it does; the cyclic GC need not scan it again at every full collection.
    gc.freeze()


def _encode_in_worker(batch: dict[str, list[Any]]) -> _Encoded:
    assert _worker_encoder is not None
    return _worker_encoder(batch)


def _in_order(pool: Pool, workers: int, batches: Iterator[dict[str, list[Any]]]
              ) -> Iterator[_Encoded]:
    """The batches encoded by ``pool``, in order, with just enough of them in flight to
    keep every worker busy: this process reads the next batches meanwhile, and memory
    holds a few batches, not the data (``Pool.imap`` would read all input ahead)."""
    pending: deque[AsyncResult] = deque()
    for batch in batches:
        pending.append(pool.apply_async(_encode_in_worker, (batch,)))
        if len(pending) > 2 * workers:
            yield pending.popleft().get()
    while pending:
        yield pending.popleft().get()


def encode_source(loader: Loader, data: DataConfig, log: DropLog, seen: dict[bytes, str],
            near: NearDuplicates | None, encoder: Encoder) -> EncodedChunks:
    """Read, template and tokenize one source; record its drops in ``log``.

    This process reads and validates (the only part that needs every record in one place:
    the dedupe index) while forked workers encode the batches already read, so reading
    costs no wall time. The drops found while encoding are kept in a file and logged after
    reading, so ``dropped.jsonl`` and strict mode see them in the same order as a
    read-then-encode loop would.
    """
    out = EncodedChunks(["n_tokens", "n_trainable", "truncated", "origin", "conversation"]
                        + (["stratum"] if data.validation.stratify_by else []), _CHUNK_BYTES)
    batches = _batches(_raw_rows(loader, data, log, seen, near), _BATCH)
    head = list(islice(batches, 2))
    workers = os.cpu_count() or 1
    with ExitStack() as stack:
        deferred = stack.enter_context(
            tempfile.TemporaryFile("w+", encoding="utf-8", dir=encoder.work))
        if workers > 1 and len(head) > 1:  # workers pay off once each gets a batch
            context = multiprocessing.get_context("fork")
            pool = stack.enter_context(context.Pool(workers, _start_worker, (encoder,)))
            results = _in_order(pool, workers, chain(head, batches))
        else:
            results = map(encoder, chain(head, batches))
        for result in results:
            deferred.writelines(json.dumps(drop) + "\n" for drop in result.drops)
            out.add(result.path, result.nbytes, result.columns)
        out.end_chunk()
        deferred.seek(0)
        for line in deferred:
            log.drop(*json.loads(line))
    return out
