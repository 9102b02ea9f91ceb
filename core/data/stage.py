"""The ``prepare`` stage: loader records → canonical conversations → cleaned, deduplicated,
templated, length-limited, split, and saved as Arrow datasets with a report.

Memory stays bounded whatever the input size: each source is read and encoded in batches
by worker processes (``encoding.py``), so the encoded data is never resident here (only
the dedupe index grows with the data, by ~200 bytes a record). The splits are
written chunk by chunk (see ``chunks.py``). Every record read is accounted for: kept, or
dropped with a reason in ``data/report.json`` and ``data/dropped.jsonl``.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
from rich.console import Console

from lorapipe.artifacts import RunPaths
from lorapipe.atomic import atomic_directory, atomic_write_json
from lorapipe.components import ChatTemplate, Loader
from lorapipe.context import RunContext
from lorapipe.data.cache import fingerprint
from lorapipe.data.chunks import EncodedChunks, Splits, write_splits
from lorapipe.data.encoding import OUTPUT_FEATURES, Encoder, encode_source
from lorapipe.data.report import DropLog, print_summary, token_stats
from lorapipe.data.samples import ORIGINS
from lorapipe.data.schemas import KIND, check_columns
from lorapipe.data.split import split_indices, validation_size
from lorapipe.data.template_check import check_template
from lorapipe.errors import UserError
from lorapipe.manifest import problem, write_manifest
from lorapipe.model.pretrained import load_tokenizer, save_tokenizer

console = Console(highlight=False)


def _reuse(paths: RunPaths, fp: str | None) -> dict[str, Any] | None:
    if fp is None or not paths.data_report.is_file():
        return None
    report = json.loads(paths.data_report.read_text())
    if report.get("fingerprint") != fp:
        return None
    damaged = problem(paths.data)  # reused only if every file is as prepare wrote it
    if damaged is not None:
        console.print(f"[yellow]prepare:[/] not reusing {paths.data}: {damaged}")
        return None
    return report


def _summary(report: dict[str, Any], reused: bool) -> dict[str, Any]:
    return {"records_read": report["records_read"], "kept": report["kept"],
            "dropped": report["dropped_total"], **report["split"]["sizes"], "reused": reused}


def run_stage(ctx: RunContext) -> dict[str, Any]:
    config, paths = ctx.config, ctx.paths
    data = config.data
    check_columns(data.columns)
    loader, val_loader, template = ctx.plan.loader, ctx.plan.validation_loader, ctx.plan.template
    tokenizer = load_tokenizer(config.model)  # the model's own; data/tokenizer/ keeps a copy
    if data.format not in KIND:  # text and prompt/completion records use no template
        check_template(ctx.plan, tokenizer)

    paths.data.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=".prepare-", dir=paths.data))
    try:
        # merged/ and every export serve the model in the format it is trained on.
        tokenizer.chat_template = template.serving_template(tokenizer)
        save_tokenizer(tokenizer, config.model, work / "tokenizer")
        fp = fingerprint(ctx.plan, list(ctx.plan.loaders()), work / "tokenizer")
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
        write_manifest(paths.data)
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
    origins = np.concatenate([column(split, "origin") for split in splits])
    return {
        "truncated": int(sum(column(split, "truncated").sum() for split in splits)),
        # samples beyond one per kept record: a long document's further blocks, the turns
        # data.reasoning_turns: expand trains on their own
        "added_samples": {origin: int((origins == k).sum())
                          for k, origin in enumerate(ORIGINS) if origin != "record"},
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
    near = None
    if data.near_dedupe is not None:  # datasketch (and scipy) only when asked for
        from lorapipe.data.near_duplicates import NearDuplicates

        near = NearDuplicates(data.near_dedupe)
    validation: EncodedChunks | None = None
    val_log: DropLog | None = None
    test: EncodedChunks | None = None
    test_log: DropLog | None = None
    with (work / "dropped.jsonl").open("w", encoding="utf-8") as sink:
        log = DropLog(data.strict, sink)
        encoder = Encoder(template, tokenizer, data, work)
        kept = encode_source(loader, data, log, seen, near, encoder)
        if val_loader is not None:
            val_log = DropLog(data.strict, sink)
            validation = encode_source(val_loader, data, val_log, seen, near, encoder)
        if ctx.plan.test_loader is not None:
            test_log = DropLog(data.strict, sink)
            test = encode_source(ctx.plan.test_loader, data, test_log, seen, near, encoder)
    os.replace(work / "dropped.jsonl", paths.data / "dropped.jsonl")

    report = log.as_dict()
    if val_log is not None:
        report["validation_source"] = val_log.as_dict()
    if test_log is not None:
        report["test_source"] = test_log.as_dict()
    report["dropped_list"] = "dropped.jsonl"
    try:
        splits, method = _split(ctx, loader, kept, val_loader, validation, test)
    except UserError as err:
        # Why the records were dropped is the answer to this error: keep the counts. With
        # no fingerprint, this report marks no outputs complete (see ``_reuse``).
        atomic_write_json(paths.data_report, {**report, "error": str(err)})
        raise
    report.update(_split_report(splits))
    report["split"].update(method=method, seed=config.train.seed,
                           stratify_by=data.validation.stratify_by)
    if data.test is not None:
        report["split"]["test_method"] = ("loader" if data.test.loader is not None else
                                          "count" if data.test.count is not None
                                          else "fraction")

    write_splits(splits, paths.data, OUTPUT_FEATURES, work)
    if "test" not in splits:  # a test split of an earlier prepare must not be scored
        shutil.rmtree(paths.test_data, ignore_errors=True)
    return report


def _split(ctx: RunContext, loader: Loader, kept: EncodedChunks, val_loader: Loader | None,
           validation: EncodedChunks | None,
           test: EncodedChunks | None) -> tuple[Splits, str]:
    """The train and validation samples and how they were chosen; a ``UserError`` when too
    few records are left for both."""
    data, seed = ctx.config.data, ctx.config.train.seed
    for source, samples in ((loader, kept), (val_loader, validation),
                            (ctx.plan.test_loader, test)):
        if source is not None and samples is not None and len(samples) == 0:
            raise UserError(
                f"{source.field}: no usable records after cleaning; every record was dropped "
                f"(counts per reason in {ctx.paths.data_report}, each record in "
                f"{ctx.paths.data / 'dropped.jsonl'})")
    positions = np.arange(len(kept))
    splits: Splits = {}
    if test is not None:
        splits["test"] = (test, np.arange(len(test)))
    elif data.test is not None:  # held out first: the validation split never includes it
        size = validation_size(len(kept), data.test.fraction, data.test.count, "data.test")
        rest, test = split_indices(len(kept), size, seed + 1,
                                   groups=kept.column("conversation").tolist())
        positions, splits["test"] = positions[rest], (kept, positions[test])
    if validation is not None:
        return {"train": (kept, positions),
                "validation": (validation, np.arange(len(validation))), **splits}, "loader"
    size = validation_size(len(positions), data.validation.fraction, data.validation.count)
    strata = (kept.column("stratum")[positions].tolist() if data.validation.stratify_by
              else None)
    groups = kept.column("conversation")[positions].tolist()
    train_idx, val_idx = split_indices(len(positions), size, seed, strata, groups)
    method = "count" if data.validation.count is not None else "fraction"
    return {"train": (kept, positions[train_idx]),
            "validation": (kept, positions[val_idx]), **splits}, method
