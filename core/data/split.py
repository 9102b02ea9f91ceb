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


def split_indices(n: int, size: int, seed: int, strata: list[str] | None = None,
                  groups: list[str | None] | None = None) -> tuple[list[int], list[int]]:
    """Sorted (train, held-out) indices; the same seed gives the same split.

    With ``strata`` each stratum contributes to the held-out side in proportion to its
    size (largest remainders first), so rare strata are not left out by chance. With
    ``groups`` (a ``conversation_id`` per record, ``None`` for a record on its own) a
    group is never divided: whole groups are held out until the share is reached, so
    the held-out side may be a little larger than ``size``.
    """
    rng = np.random.default_rng(seed)
    if groups is not None and any(g is not None for g in groups):
        return _grouped(n, size, rng, strata, groups)
    if strata is None:
        chosen = rng.permutation(n)[:size]
    else:
        by_stratum: dict[str, list[int]] = defaultdict(list)
        for index, value in enumerate(strata):
            by_stratum[value].append(index)
        names = sorted(by_stratum)
        take = _shares([len(by_stratum[s]) for s in names], size, n)
        chosen = np.concatenate([
            rng.permutation(by_stratum[s])[:k] for s, k in zip(names, take, strict=True)
        ]).astype(int)
    held = set(chosen.tolist())
    return [i for i in range(n) if i not in held], sorted(held)


def _shares(sizes: list[int], size: int, n: int) -> np.ndarray:
    """``size`` divided among strata of ``sizes`` in proportion, largest remainders first."""
    exact = np.array([k * size / n for k in sizes])
    take = np.floor(exact).astype(int)
    for g in np.argsort(-(exact - take), kind="stable")[: size - take.sum()]:
        take[g] += 1
    return take


def _grouped(n: int, size: int, rng: np.random.Generator, strata: list[str] | None,
             groups: list[str | None]) -> tuple[list[int], list[int]]:
    members: dict[tuple[str, str | int], list[int]] = {}
    for index, group in enumerate(groups):
        members.setdefault(("id", group) if group is not None else ("row", index),
                           []).append(index)
    units = list(members.values())
    by_stratum: dict[str, list[int]] = defaultdict(list)
    for u, unit in enumerate(units):
        by_stratum[strata[unit[0]] if strata is not None else ""].append(u)
    names = sorted(by_stratum)
    take = _shares([sum(len(units[u]) for u in by_stratum[s]) for s in names], size, n)
    held: list[int] = []
    for name, wanted in zip(names, take, strict=True):
        taken = 0
        for u in rng.permutation(by_stratum[name]):
            if taken >= wanted:
                break
            held.extend(units[u])
            taken += len(units[u])
    if len(held) >= n:
        raise UserError(
            f"the records form too few conversations (conversation_id) to hold out {size} "
            "record(s) and still train on one; add data or hold out fewer"
        )
    chosen = set(held)
    return [i for i in range(n) if i not in chosen], sorted(chosen)
