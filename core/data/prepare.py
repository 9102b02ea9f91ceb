"""The ``prepare`` stage: loader records → canonical conversations → cleaned, deduplicated,
templated, length-limited, split, and saved as Arrow datasets with a report.

Memory stays bounded whatever the input size: reading streams the loader into Arrow
files of ``_CHUNK`` rows (only the dedupe index grows with the data, by ~200 bytes a
record); each chunk is templated and tokenized by a batched ``Dataset.map`` in worker
processes; the splits are written by worker processes too (see ``_encode`` for why that
matters). Every record read is accounted for: kept, or dropped with a reason in
``data/report.json`` and ``data/dropped.jsonl``.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import uuid
from collections.abc import Iterator
from itertools import chain, islice
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from datasets import Dataset, Features, Sequence, Value
from datasets.arrow_writer import ArrowWriter
from rich.console import Console
from tqdm.auto import tqdm

from lorapipe.artifacts import RunPaths
from lorapipe.atomic import atomic_directory, atomic_write_json
from lorapipe.components import ChatTemplate, Loader, UnrenderableConversation
from lorapipe.config import ComponentRef, DataConfig
from lorapipe.context import RunContext
from lorapipe.data.cache import fingerprint
from lorapipe.data.chunks import EncodedChunks, Splits, arrow_column, chunk_jobs, write_splits
from lorapipe.data.cleaning import dedupe_key, validate
from lorapipe.data.length import fit
from lorapipe.data.report import DropLog, print_summary, token_stats
from lorapipe.data.schemas import RecordError, check_columns, to_messages
from lorapipe.data.split import split_indices, validation_size
from lorapipe.errors import UserError

OUTPUT_COLUMNS = ["input_ids", "attention_mask", "labels", "messages", "source"]
_RAW = Features({"messages": Value("string"), "source": Value("string"),
                 "stratum": Value("string")})
_ENCODED = Features({
    "input_ids": Sequence(Value("int32")), "attention_mask": Sequence(Value("int8")),
    "labels": Sequence(Value("int32")), "messages": Value("string"),
    "source": Value("string"), "stratum": Value("string"), "drop": Value("string"),
    "detail": Value("string"), "truncated": Value("bool"), "n_tokens": Value("int32"),
    "n_trainable": Value("int32"),
})
_READ_BATCH = 10_000
# Conversation text per Arrow chunk of the read data (see ``_encode``); encoded, a chunk
# takes about three times as much (token ids, labels, mask and the messages).
_CHUNK_CHARS = 32 << 20
# Below this many records a worker pool costs more than it saves.
_RECORDS_PER_WORKER = 5000

console = Console(highlight=False)


def _component(ctx: RunContext, kind: str, field: str, ref: ComponentRef) -> Any:
    return ctx.registry.get(kind, ref.name, f"{field}.name")(ref.options)


# --- reading --------------------------------------------------------------------------


def _raw_rows(loader: Loader, data: DataConfig, log: DropLog,
              seen: dict[bytes, str]) -> Iterator[dict[str, str]]:
    """Canonical, valid, not-yet-seen conversations; everything else goes to ``log``."""
    field = data.validation.stratify_by
    for record in tqdm(loader.records(), desc="reading records", unit=" rec"):
        log.read += 1
        if record.error is not None:
            reason, _, detail = record.error.partition(": ")
            log.drop(reason, record.location, detail)
            continue
        try:
            messages = to_messages(record.data, data.format, data.columns)
            validate(messages)
        except RecordError as err:
            log.drop(err.reason, record.location, err.detail)
            continue
        if data.dedupe:
            key = dedupe_key(messages)
            if key in seen:
                log.drop("duplicate", record.location, f"same conversation as {seen[key]}")
                continue
            seen[key] = record.location
        stratum = str(record.data.get(field, "(missing)")) if field else ""
        yield {"messages": json.dumps(messages, ensure_ascii=False),
               "source": record.location, "stratum": stratum}


def _batches(rows: Iterator[dict[str, str]], size: int) -> Iterator[dict[str, list[str]]]:
    while chunk := list(islice(rows, size)):
        yield {name: [row[name] for row in chunk] for name in _RAW}


def _read(loader: Loader, data: DataConfig, log: DropLog, seen: dict[bytes, str],
          work: Path) -> list[Path]:
    """Stream the accepted conversations into Arrow files of about ``_CHUNK_CHARS`` of
    conversation text each (see ``_encode``).

    Memory holds one batch of ``_READ_BATCH`` rows; datasets' column-wise ``write_batch``
    costs far less per record than ``Dataset.from_generator``'s per-example encoding.
    """
    rows = _raw_rows(loader, data, log, seen)
    chunks: list[Path] = []
    while True:
        path = work / f"raw-{uuid.uuid4().hex}.arrow"
        chars = 0
        with ArrowWriter(features=_RAW, path=str(path)) as writer:
            for batch in _batches(rows, _READ_BATCH):
                writer.write_batch(batch)
                chars += sum(map(len, batch["messages"]))
                if chars >= _CHUNK_CHARS:
                    break
            writer.finalize()
        if chars or not chunks:
            chunks.append(path)
        if chars < _CHUNK_CHARS:
            return chunks


# --- templating -----------------------------------------------------------------------


def _list_array(rows: np.ndarray, offsets: np.ndarray) -> pa.ListArray:
    return pa.ListArray.from_arrays(pa.array(offsets), pa.array(rows))


def _encode_batch(batch: dict[str, list], template: ChatTemplate, tokenizer: Any,
                  data: DataConfig) -> pa.Table:
    """Template and tokenize one batch; returns Arrow columns built from flat numpy arrays
    (converting per-token Python lists to Arrow one by one would cost as much as
    tokenizing)."""
    options = {"train_on": data.train_on, "train_on_inputs": data.train_on_inputs}
    conversations = [json.loads(m) for m in batch["messages"]]

    def encode_one(messages: list[dict[str, str]]) -> Any:
        return template.encode(messages, tokenizer, **options)

    try:
        encoded: list[Any] = template.encode_batch(conversations, tokenizer, **options)
    except UnrenderableConversation:  # find which ones, keep the rest
        encoded = []
        for messages in conversations:
            try:
                encoded.append(encode_one(messages))
            except UnrenderableConversation as err:
                encoded.append(err)
    ids_rows, trainable_rows = [], []
    columns: dict[str, list] = {"messages": [], "drop": [], "detail": [], "truncated": []}
    for i, (messages, enc) in enumerate(zip(conversations, encoded, strict=True)):
        drop = detail = ""
        truncated = False
        try:
            if isinstance(enc, UnrenderableConversation):
                raise RecordError("unrenderable", str(enc))
            messages, enc, truncated = fit(messages, enc, encode_one, tokenizer,
                                           data.max_length, data.length_strategy)
            if not any(enc.trainable):
                raise RecordError("no_trainable_tokens", "no token of this sample is trained")
            ids, trainable = enc.input_ids, enc.trainable
        except RecordError as err:
            drop, detail, ids, trainable = err.reason, err.detail, [], []
        ids_rows.append(ids)
        trainable_rows.append(trainable)
        columns["messages"].append(json.dumps(messages, ensure_ascii=False) if truncated
                                   else batch["messages"][i])
        columns["drop"].append(drop)
        columns["detail"].append(detail)
        columns["truncated"].append(truncated)
    lengths = np.fromiter(map(len, ids_rows), dtype=np.int32, count=len(ids_rows))
    offsets = np.zeros(len(lengths) + 1, dtype=np.int32)
    np.cumsum(lengths, out=offsets[1:])
    total = int(offsets[-1])
    ids = np.fromiter(chain.from_iterable(ids_rows), dtype=np.int32, count=total)
    trained = np.fromiter(chain.from_iterable(trainable_rows), dtype=bool, count=total)
    trained_before = np.concatenate([[0], np.cumsum(trained, dtype=np.int32)])
    arrays = {
        "input_ids": _list_array(ids, offsets),
        "attention_mask": _list_array(np.ones(total, dtype=np.int8), offsets),
        "labels": _list_array(np.where(trained, ids, np.int32(-100)), offsets),
        "messages": pa.array(columns["messages"], pa.string()),
        "source": pa.array(batch["source"], pa.string()),
        "stratum": pa.array(batch["stratum"], pa.string()),
        "drop": pa.array(columns["drop"], pa.string()),
        "detail": pa.array(columns["detail"], pa.string()),
        "truncated": pa.array(columns["truncated"], pa.bool_()),
        "n_tokens": pa.array(lengths),
        "n_trainable": pa.array(trained_before[offsets[1:]] - trained_before[offsets[:-1]]),
    }
    return pa.Table.from_pydict(arrays, schema=_ENCODED.arrow_schema)


def _workers(n: int) -> int | None:
    """Worker processes for ``n`` records; ``None`` (this process) when few."""
    workers = min(os.cpu_count() or 1, n // _RECORDS_PER_WORKER)
    return workers if workers > 1 else None


def _encode(chunks: list[Path], template: ChatTemplate, tokenizer: Any, data: DataConfig,
            log: DropLog) -> EncodedChunks:
    """Template and tokenize; record the drops in ``log``.

    One chunk at a time, each by a fresh worker pool: a process keeps the pages of a
    memory-mapped Arrow file it has read resident until the file is closed, so peak memory
    follows the chunk size, not the data size.
    """
    out = EncodedChunks(["n_tokens", "n_trainable", "truncated"]
                        + (["stratum"] if data.validation.stratify_by else []))
    for path in chunks:
        raw = Dataset.from_file(str(path))
        encoded = raw.map(
            _encode_batch, batched=True, batch_size=1000, features=_ENCODED,
            remove_columns=raw.column_names, num_proc=_workers(len(raw)),
            fn_kwargs={"template": template, "tokenizer": tokenizer, "data": data},
            new_fingerprint=uuid.uuid4().hex, desc="templating + tokenizing",
        )
        del raw
        dropped = pc.not_equal(arrow_column(encoded, "drop"), "").to_numpy(
            zero_copy_only=False)
        if dropped.any():
            rows = encoded.select_columns(["drop", "detail", "source"]).select(
                np.flatnonzero(dropped))
            for row in rows:
                log.drop(row["drop"], row["source"], row["detail"])
        out.add(encoded, np.flatnonzero(~dropped))
    return out


# --- the stage ------------------------------------------------------------------------


def _reuse(paths: RunPaths, fp: str | None) -> dict[str, Any] | None:
    if fp is None or not paths.data_report.is_file():
        return None
    report = json.loads(paths.data_report.read_text())
    outputs = (paths.train_data, paths.validation_data, paths.tokenizer)
    if report.get("fingerprint") != fp or not all(p.is_dir() for p in outputs):
        return None
    return report


def _summary(report: dict[str, Any], reused: bool) -> dict[str, Any]:
    return {"records_read": report["records_read"], "kept": report["kept"],
            "dropped": report["dropped_total"], **report["split"]["sizes"], "reused": reused}


def run_stage(ctx: RunContext) -> dict[str, Any]:
    config, paths = ctx.config, ctx.paths
    data = config.data
    check_columns(data.columns)
    loader = _component(ctx, "loader", "data.loader", data.loader)
    val_loader = (_component(ctx, "loader", "data.validation.loader", data.validation.loader)
                  if data.validation.loader is not None else None)
    template = _component(ctx, "chat_template", "data.template", data.template)
    # Imported here: worker processes import this module and need not load peft.
    from lorapipe.model import load_tokenizer

    tokenizer = load_tokenizer(config)  # the model's own; data/tokenizer/ keeps a copy

    paths.data.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=".prepare-", dir=paths.data))
    try:
        tokenizer.save_pretrained(work / "tokenizer")
        loaders = [loader] + ([val_loader] if val_loader else [])
        fp = fingerprint(config, loaders, work / "tokenizer")
        previous = _reuse(paths, fp)
        if previous is not None:
            console.print(f"[green]prepare:[/] data, config and tokenizer unchanged; reusing "
                          f"{paths.data} (fingerprint {fp[:12]})")
            return _summary(previous, reused=True)
        report = _prepare(ctx, loader, val_loader, template, tokenizer, work)
        report["fingerprint"] = fp
        with atomic_directory(paths.tokenizer) as tmp:
            shutil.copytree(work / "tokenizer", tmp, dirs_exist_ok=True)
        atomic_write_json(paths.data_report, report)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print_summary(report, console)
    return _summary(report, reused=False)


def _split_report(splits: Splits) -> dict[str, Any]:
    """Truncations, token-length statistics and sizes of the splits."""

    def column(split: str, name: str) -> np.ndarray:
        source, positions = splits[split]
        return source.column(name)[positions].astype(np.int64)

    trainable = {split: column(split, "n_trainable") for split in splits}
    return {
        "truncated": int(sum(column(split, "truncated").sum() for split in splits)),
        "tokens": token_stats(np.concatenate([column(split, "n_tokens") for split in splits]),
                              np.concatenate(list(trainable.values()))),
        "trainable_tokens": {split: int(t.sum()) for split, t in trainable.items()},
        "split": {"sizes": {split: len(positions) for split, (_, positions) in splits.items()}},
    }


def _prepare(ctx: RunContext, loader: Loader, val_loader: Loader | None,
             template: ChatTemplate, tokenizer: Any, work: Path) -> dict[str, Any]:
    config, paths, data = ctx.config, ctx.paths, ctx.config.data
    # The previous report marks the previous outputs complete; they are about to change.
    paths.data_report.unlink(missing_ok=True)
    seen: dict[bytes, str] = {}
    with (work / "dropped.jsonl").open("w", encoding="utf-8") as sink:
        log = DropLog(data.strict, sink)
        kept = _encode(_read(loader, data, log, seen, work), template, tokenizer, data, log)
        val_log = None
        if val_loader is not None:
            val_log = DropLog(data.strict, sink)
            validation = _encode(_read(val_loader, data, val_log, seen, work), template,
                                 tokenizer, data, val_log)
            if len(kept) == 0 or len(validation) == 0:
                which = "data.loader" if len(kept) == 0 else "data.validation.loader"
                raise UserError(f"{which}: no usable records after cleaning "
                                f"(see {paths.data / 'dropped.jsonl'})")
            splits: Splits = {"train": (kept, np.arange(len(kept))),
                      "validation": (validation, np.arange(len(validation)))}
            method = "loader"
        else:
            size = validation_size(len(kept), data.validation.fraction, data.validation.count)
            strata = kept.column("stratum").tolist() if data.validation.stratify_by else None
            train_idx, val_idx = split_indices(len(kept), size, config.train.seed, strata)
            splits = {"train": (kept, np.asarray(train_idx, dtype=np.int64)),
                      "validation": (kept, np.asarray(val_idx, dtype=np.int64))}
            method = "count" if data.validation.count is not None else "fraction"
    os.replace(work / "dropped.jsonl", paths.data / "dropped.jsonl")

    report = log.as_dict()
    report.update(_split_report(splits))
    report["split"].update(method=method, seed=config.train.seed,
                           stratify_by=data.validation.stratify_by)
    if val_log is not None:
        report["validation_source"] = val_log.as_dict()
    report["dropped_list"] = "dropped.jsonl"

    output = Features({name: _ENCODED[name] for name in OUTPUT_COLUMNS})
    write_splits(chunk_jobs(splits), paths.data, output, work)
    return report
