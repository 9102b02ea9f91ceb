"""Paired bootstrap intervals: how sure a base-vs-fine-tuned comparison is.

A score on a few hundred held-out samples moves with the samples; resampling them with
replacement (the same draw for both models, so the change is judged pairwise) and taking
the 2.5th and 97.5th percentiles of each statistic gives its 95% interval.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

RESAMPLES = 1000


def paired_bootstrap(n: int, statistic: Callable[[np.ndarray], tuple[float, float]],
                     resamples: int = RESAMPLES, seed: int = 0) -> dict[str, list[float]]:
    """95% intervals of ``base``, ``finetuned`` and ``change`` (fine-tuned − base).

    ``statistic`` maps the indices of one draw (with repeats) of the ``n`` samples to the
    (base, fine-tuned) scores on it.
    """
    rng = np.random.default_rng(seed)
    values = np.array([statistic(rng.integers(0, n, size=n)) for _ in range(resamples)])
    columns = {"base": values[:, 0], "finetuned": values[:, 1],
               "change": values[:, 1] - values[:, 0]}
    return {name: [float(v) for v in np.percentile(column, [2.5, 97.5])]
            for name, column in columns.items()}
