"""The built-in ``preference`` evaluator: how the fine-tuned model ranks the held-out
preference pairs, against the base.

Per pair it scores each side's log-probability of its reply (the trained tokens) under
both models. Reported, each with a paired bootstrap 95% interval:

- ``reward_accuracy`` and ``reward_margin``: the fine-tuned model's implicit DPO reward
  ``β·(log p_tuned - log p_base)`` of each side, the base as reference (as in training):
  how often the chosen side's beats the rejected side's, and by how much on average.
  The base's own reward is 0 on every side, so these are the fine-tuned model's alone;
- ``preference_accuracy``: how often the model gives the chosen reply more probability
  per token than the rejected one, base and fine-tuned (what the reward cannot show for
  the base);
- ``logp_chosen``: the mean log-probability of the chosen replies, base and fine-tuned.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from pydantic import Field

from lorapipe.plugin import EvalContext, Evaluator, Options, UserError, hookimpl


class PreferenceOptions(Options):
    beta: float = Field(0.1, gt=0)  # the implicit reward's scale (dpo's beta)
    batch_size: int = Field(8, ge=1)  # pairs per forward


class PreferenceEvaluator(Evaluator):
    """Reward accuracy and margin (base as reference), preference accuracy and chosen
    log-probability, base vs fine-tuned, on held-out preference pairs."""

    name = "preference"
    Options = PreferenceOptions
    records = "preference"

    def evaluate(self, context: EvalContext) -> dict[str, Any]:
        from lorapipe.plugin import paired_bootstrap

        data = context.dataset
        if "rejected_input_ids" not in data.column_names or not any(
                data["rejected_input_ids"]):
            raise UserError(f"{self.field}: the held-out data holds no preference pairs "
                            "(prompt + chosen + rejected); use this evaluator on such data")
        pairs = [i for i, ids in enumerate(data["rejected_input_ids"]) if ids]
        base, tuned = self._scores(context, data.select(pairs))
        beta = self.options.beta
        margin = beta * ((tuned[:, 0] - base[:, 0]) - (tuned[:, 1] - base[:, 1]))
        preferred = [scores[:, 2] > scores[:, 3] for scores in (base, tuned)]

        def reward(indices: np.ndarray) -> tuple[float, float]:
            return 0.0, float((margin[indices] > 0).mean())

        def mean_margin(indices: np.ndarray) -> tuple[float, float]:
            return 0.0, float(margin[indices].mean())

        def preference(indices: np.ndarray) -> tuple[float, float]:
            return float(preferred[0][indices].mean()), float(preferred[1][indices].mean())

        def chosen(indices: np.ndarray) -> tuple[float, float]:
            return float(base[indices, 0].mean()), float(tuned[indices, 0].mean())

        n = len(pairs)
        compared = {"preference_accuracy": paired_bootstrap(n, preference),
                    "logp_chosen": paired_bootstrap(n, chosen)}
        base_scores = {"preference_accuracy": float(preferred[0].mean()),
                       "logp_chosen": float(base[:, 0].mean())}
        tuned_scores = {"preference_accuracy": float(preferred[1].mean()),
                        "logp_chosen": float(tuned[:, 0].mean())}
        # the reward is relative to the base: the base has none of its own (None)
        return {
            "base": {"reward_accuracy": None, "reward_margin": None, **base_scores},
            "finetuned": {"reward_accuracy": float((margin > 0).mean()),
                          "reward_margin": float(margin.mean()), **tuned_scores},
            "change": {name: tuned_scores[name] - base_scores[name] for name in base_scores},
            "ci95": {"change": {name: ci["change"] for name, ci in compared.items()},
                     "finetuned": {"reward_accuracy": paired_bootstrap(n, reward)["finetuned"],
                                   "reward_margin": paired_bootstrap(n, mean_margin)["finetuned"],
                                   **{name: ci["finetuned"] for name, ci in compared.items()}}},
            "pairs": n, "beta": beta,
        }

    def _scores(self, context: EvalContext, data: Any) -> tuple[np.ndarray, np.ndarray]:
        """Per pair, for base and fine-tuned: summed log-probability of the chosen and
        the rejected reply, and each per token."""
        import torch
        from tqdm import tqdm

        from lorapipe.plugin import collate_pairs, sequence_logps

        examples = [((c, cl), (r, rl)) for c, cl, r, rl in zip(
            data["input_ids"], data["labels"], data["rejected_input_ids"],
            data["rejected_labels"], strict=True)]
        size = self.options.batch_size
        scores: dict[str, list[np.ndarray]] = {"base": [], "finetuned": []}
        model = context.model
        device = next(model.parameters()).device
        with torch.no_grad(), tqdm(total=2 * len(examples), desc="preference",
                                   unit="pair") as bar:
            for start in range(0, len(examples), size):
                batch = collate_pairs([[e] for e in examples[start:start + size]],
                                      context.pad_token_id)
                batch = {k: v.to(device) for k, v in batch.items()}
                with context.base() as base:
                    scores["base"].append(_as_array(sequence_logps(base, batch)))
                bar.update(len(batch["input_ids"]) // 2)
                scores["finetuned"].append(_as_array(sequence_logps(model, batch)))
                bar.update(len(batch["input_ids"]) // 2)
        return np.concatenate(scores["base"]), np.concatenate(scores["finetuned"])


def _as_array(sides: Any) -> np.ndarray:
    """(pairs, 4): chosen and rejected sums, then each per token."""
    import torch

    columns = [sides.chosen, sides.rejected, sides.chosen / sides.chosen_tokens,
               sides.rejected / sides.rejected_tokens]
    return torch.stack(columns, dim=1).float().cpu().numpy()


@hookimpl
def lorapipe_register_evaluators(register):  # noqa: ANN001, ANN201 - pluggy hook
    register(PreferenceEvaluator)
