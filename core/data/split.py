"""Seeded train/validation (and test) split by fraction or count, optionally stratified."""

from __future__ import annotations

from collections import defaultdict

import numpy as np

from lorapipe.errors import UserError


def validation_size(n: int, fraction: float | None, count: int | None,
                    section: str = "data.validation") -> int:
    """How many of ``n`` records to hold out: at least one, and never all of them."""
    size = count if count is not None else max(1, round(n * (fraction or 0)))
    if n - size < 1:
        field = "count" if count is not None else "fraction"
        raise UserError(
            f"{section}.{field}: only {n} usable record(s) left, too few to hold out "
            f"{size} and still train on at least one; add data, lower {section}, or give "
            "a separate data.validation.loader"
        )
    return size


def split_indices(n: int, size: int, seed: int,
                  strata: list[str] | None = None) -> tuple[list[int], list[int]]:
    """Sorted (train, validation) indices; the same seed gives the same split.

    With ``strata`` each group contributes to validation in proportion to its size
    (largest remainders first), so rare groups are not left out by chance.
    """
    rng = np.random.default_rng(seed)
    if strata is None:
        chosen = rng.permutation(n)[:size]
    else:
        groups: dict[str, list[int]] = defaultdict(list)
        for index, value in enumerate(strata):
            groups[value].append(index)
        names = sorted(groups)
        exact = np.array([len(groups[g]) * size / n for g in names])
        take = np.floor(exact).astype(int)
        for g in np.argsort(-(exact - take), kind="stable")[: size - take.sum()]:
            take[g] += 1
        chosen = np.concatenate([
            rng.permutation(groups[g])[:k] for g, k in zip(names, take, strict=True)
        ]).astype(int)
    held = set(chosen.tolist())
    return [i for i in range(n) if i not in held], sorted(held)
