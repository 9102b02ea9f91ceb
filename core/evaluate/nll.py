"""Token-level negative log-likelihood, split by whether the loss trained the token.

Perplexity is ``exp`` of the token-weighted mean NLL over a set of tokens. Averaging
per-sequence perplexities instead would let short samples dominate, so the sums and
counts are kept and divided once at the end.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from lorapipe.evaluate.bootstrap import RESAMPLES, paired_bootstrap

# response: tokens the loss covered (labels != -100); prompt: every other predicted
# token; all: both. The first token of a sequence is never predicted, so it is in none.
PARTS = ("response", "prompt", "all")


@dataclass
class NllTotals:
    nll: dict[str, float] = field(default_factory=lambda: dict.fromkeys(PARTS, 0.0))
    tokens: dict[str, int] = field(default_factory=lambda: dict.fromkeys(PARTS, 0))
    # per sequence, in dataset order: (NLL sum, token count) per part, for the bootstrap
    per_sample: dict[str, np.ndarray] = field(default_factory=dict)

    def perplexity(self) -> dict[str, float | None]:
        """exp(mean NLL) per part; ``None`` for a part with no tokens."""
        return {
            part: math.exp(self.nll[part] / self.tokens[part]) if self.tokens[part] else None
            for part in PARTS
        }


@torch.no_grad()
def token_nll(model: Any, dataset: Any, *, batch_size: int, pad_id: int,
              progress: Any = None) -> NllTotals:
    """Sum the NLL of every predicted token of ``dataset``, by part.

    Sequences are batched in length order to waste little on padding, and padded the way
    training pads them (``collate``); ``progress`` is called with the number of sequences
    done after each batch.
    """
    from lorapipe.train.batching import IGNORE, collate, load_examples

    model.eval()
    device = next(model.parameters()).device
    examples = load_examples(dataset)
    order = sorted(range(len(examples)), key=lambda i: len(examples[i][0]))
    totals = NllTotals()
    per_sample = {part: np.zeros((len(examples), 2)) for part in PARTS}
    for start in range(0, len(order), batch_size):
        rows = [[examples[i]] for i in order[start : start + batch_size]]
        batch = collate(rows, pad_id)
        ids, mask = batch["input_ids"], batch["attention_mask"]
        logits = model(input_ids=ids.to(device), attention_mask=mask.to(device)).logits
        nll = F.cross_entropy(
            logits[:, :-1].float().transpose(1, 2), ids[:, 1:].to(device), reduction="none"
        ).cpu()
        predicted = mask[:, 1:].bool()
        trained = predicted & (batch["labels"][:, 1:] != IGNORE)
        rows_done = order[start : start + batch_size]
        for part, where in (("response", trained), ("prompt", predicted & ~trained),
                            ("all", predicted)):
            totals.nll[part] += float(nll[where].double().sum())
            totals.tokens[part] += int(where.sum())
            per_sample[part][rows_done, 0] = (nll.double() * where).sum(1).numpy()
            per_sample[part][rows_done, 1] = where.sum(1).numpy()
        if progress is not None:
            progress(len(rows))
    totals.per_sample = per_sample
    return totals


def bootstrap_ci(base: NllTotals, tuned: NllTotals, resamples: int = RESAMPLES,
                 seed: int = 0) -> dict[str, dict[str, list[float] | None]]:
    """95% paired bootstrap intervals of base and fine-tuned perplexity and of their
    change, per part (token-weighted on each draw); ``None`` where a part has no tokens."""
    n = len(next(iter(base.per_sample.values())))
    out: dict[str, dict[str, list[float] | None]] = {"base": {}, "finetuned": {}, "change": {}}
    for part in PARTS:
        b, t = base.per_sample[part], tuned.per_sample[part]
        if not n or not b[:, 1].any():
            for key in out:
                out[key][part] = None
            continue

        def perplexities(draw: np.ndarray, b: np.ndarray = b, t: np.ndarray = t
                         ) -> tuple[float, float]:
            tokens = max(b[draw, 1].sum(), 1.0)
            return (float(np.exp(b[draw, 0].sum() / tokens)),
                    float(np.exp(t[draw, 0].sum() / tokens)))

        for key, interval in paired_bootstrap(n, perplexities, resamples, seed).items():
            out[key][part] = interval
    return out
