"""What one optimizer step trains on: sampling order, packing and padding.

The data order is a pure function of (seed, epoch), so a resumed run only needs the
step it stopped at to see exactly the batches an uninterrupted run would have seen.
Samples are first grouped into *effective* batches (micro batch × accumulation ×
processes) and only then split into micro-batches, so changing how an effective batch is
split (4×1 vs 1×4, one process vs two) never changes which samples it holds.
"""

from __future__ import annotations

import heapq
from collections.abc import Sequence

import numpy as np
import torch

from lorapipe.errors import UserError
from lorapipe.objective import records_for

Example = tuple[list[int], list[int]]  # input_ids, labels (-100 = not trained)
Pair = tuple[Example, Example]  # a preference pair: chosen, rejected
# an unpaired example (KTO): input_ids, labels, desirable, and its KL row (mismatched)
Rated = tuple[list[int], list[int], bool, Example]
Item = list[int]  # indices of the examples sharing one row (one unless packing)

IGNORE = -100
_BUCKET_STEPS = 50  # effective batches per length-sorted bucket


def layout_for(columns: tuple[str, ...]) -> str:
    """How an objective's examples are batched, from the columns it reads: ``pairs``
    (chosen and rejected sides), ``rated`` (one reply judged desirable or not) or
    ``single`` (input_ids and labels, as ``sft``)."""
    return {"preference": "pairs", "unpaired": "rated", None: "single"}[records_for(columns)]


def load_examples(dataset, *, layout: str = "single") -> list[Example] | list[Pair] | list[Rated]:  # noqa: ANN001 - a datasets.Dataset
    """The columns the loop trains on (``layout_for``); every other column (messages,
    source) is ignored."""
    chosen = list(zip(dataset["input_ids"], dataset["labels"], strict=True))
    if layout == "single":
        return chosen
    if layout == "rated":
        desirable = dataset["desirable"]
        _refuse_others(sum(d < 0 for d in desirable), len(desirable),
                       "replies rated desirable or not (prompt + completion + label)")
        return [(ids, labels, bool(d), kl) for (ids, labels), d, kl in zip(
            chosen, desirable, mismatched(chosen), strict=True)]
    rejected = list(zip(dataset["rejected_input_ids"], dataset["rejected_labels"], strict=True))
    _refuse_others(sum(not ids for ids, _ in rejected), len(rejected),
                   "preference pairs (chosen + rejected)")
    return list(zip(chosen, rejected, strict=True))


def _refuse_others(others: int, total: int, needed: str) -> None:
    if others:
        raise UserError(f"{others} of {total} prepared samples are not {needed}, which this "
                        "objective needs; leave the other records out of data.loader, or "
                        "train them with train.objective: sft first")


def pack(lengths: Sequence[int], max_length: int) -> list[Item]:
    """Group examples into rows of at most ``max_length`` tokens (worst-fit decreasing).

    A heap of remaining capacities keeps this O(n log rows) for large datasets; the result
    depends only on the lengths, so every epoch and every resume packs identically.
    """
    rows: list[Item] = []
    free: list[tuple[int, int]] = []  # (-remaining capacity, row index)
    for index in sorted(range(len(lengths)), key=lambda i: (-lengths[i], i)):
        size = lengths[index]
        if free and -free[0][0] >= size:
            remaining, row = heapq.heappop(free)
            rows[row].append(index)
            heapq.heappush(free, (remaining + size, row))
        else:
            rows.append([index])
            heapq.heappush(free, (-(max_length - size), len(rows) - 1))
    return rows


def epoch_steps(lengths: Sequence[int], *, seed: int, epoch: int, micro_batch_size: int,
                accumulation: int, world_size: int, group_by_length: bool) -> list[list[Item]]:
    """The optimizer steps of one epoch, each a list of ``accumulation × world_size`` micro-batches.

    With ``group_by_length`` the shuffled items are cut into buckets of 50 effective batches,
    each bucket is sorted by length (so a micro-batch holds similar lengths and little
    padding), and the effective batches are shuffled again so lengths do not trend.
    """
    rng = np.random.default_rng([seed, epoch])
    order = rng.permutation(len(lengths)).tolist()
    per_step = micro_batch_size * accumulation * world_size
    if group_by_length:
        bucket = per_step * _BUCKET_STEPS
        order = [i for start in range(0, len(order), bucket)
                 for i in sorted(order[start:start + bucket], key=lambda j: -lengths[j])]
    steps = [order[start:start + per_step] for start in range(0, len(order), per_step)]
    if group_by_length:
        rng.shuffle(steps)
    # An incomplete last step is dropped (a different one each epoch), so every step has
    # the same size whatever the split and every process gets the same number of samples.
    parts = accumulation * world_size
    return [[chunk.tolist() for chunk in np.array_split(np.array(step), parts)]
            for step in steps if len(step) == per_step]


def example_length(example: Example | Pair | Rated) -> int:
    """Tokens of an example, or of both sides of a pair."""
    first = example[0]
    return len(first[0]) + len(example[1][0]) if isinstance(first, tuple) else len(first)


def mismatched(examples: list[Example]) -> list[Example]:
    """KTO's KL rows: each example's prompt with the previous example's reply (the first
    with the last's). They are fixed in the prepared order, before any shuffle, as TRL
    fixes them in its dataset, so a row's partner does not depend on the batching and its
    reference log-probability can be computed once (``precompute_reference``)."""
    rows = []
    for (ids, labels), (other_ids, other_labels) in zip(
            examples, examples[-1:] + examples[:-1], strict=True):
        prompt, start = _prompt_length(labels), _prompt_length(other_labels)
        rows.append((ids[:prompt] + other_ids[start:],
                     [IGNORE] * prompt + other_labels[start:]))
    return rows


def collate_rated(rows: list[list[Rated]], pad_token_id: int) -> dict[str, torch.Tensor]:
    """A micro batch of rated replies (KTO): the examples, then their KL rows in the same
    order (``mismatched``), and ``desirable`` per example."""
    examples = [example for row in rows for example in row]
    batch = collate([[(ids, labels)] for ids, labels, _, _ in examples]
                    + [[kl] for _, _, _, kl in examples], pad_token_id)
    batch["desirable"] = torch.tensor([d for _, _, d, _ in examples])
    return batch


def _prompt_length(labels: list[int]) -> int:
    return next((i for i, label in enumerate(labels) if label != IGNORE), len(labels))


def collate_pairs(rows: list[list[Pair]], pad_token_id: int) -> dict[str, torch.Tensor]:
    """A micro batch of pairs as one batch: the chosen sides, then the rejected sides in
    the same order, padded to one width (one forward serves both)."""
    return collate([[chosen for chosen, _ in row] for row in rows]
                   + [[rejected for _, rejected in row] for row in rows], pad_token_id)


def collate(rows: list[list[Example]], pad_token_id: int) -> dict[str, torch.Tensor]:
    """Pad a micro-batch to its longest row.

    Unpacked rows get an attention mask. Packed rows instead get per-example position ids
    and no mask: transformers then builds a block-diagonal causal mask from where the
    positions restart, so no token attends across an example boundary. The first label of
    every packed example is masked, because after the shift it would be predicted from the
    previous example's last token.
    """
    packed = any(len(row) > 1 for row in rows)
    width = max(sum(len(ids) for ids, _ in row) for row in rows)
    input_ids, labels, positions, mask = [], [], [], []
    for row in rows:
        ids = [t for example_ids, _ in row for t in example_ids]
        row_labels = [label for _, ex_labels in row for label in [IGNORE, *ex_labels[1:]]]
        row_positions = [p for example_ids, _ in row for p in range(len(example_ids))]
        pad = width - len(ids)
        input_ids.append(ids + [pad_token_id] * pad)
        labels.append(row_labels + [IGNORE] * pad)
        positions.append(row_positions + list(range(pad)))  # padding is its own "example"
        mask.append([1] * len(ids) + [0] * pad)
    batch = {"input_ids": torch.tensor(input_ids), "labels": torch.tensor(labels)}
    if packed:
        batch["position_ids"] = torch.tensor(positions)
    else:
        batch["attention_mask"] = torch.tensor(mask)
    return batch

