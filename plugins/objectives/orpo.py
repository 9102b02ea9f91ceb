"""The ``orpo`` objective: ORPO, supervised fine-tuning and preference in one loss,
without a reference model.

Per pair, the chosen reply's negative log-likelihood per trained token plus
``-β·logσ(log odds(chosen) - log odds(rejected))``, each side's odds taken from its mean
log-probability per token (the ORPO paper's per-example form; TRL's ``ORPOTrainer``
averages the NLL over the tokens of a whole batch instead, which weighs long replies
more and changes with the batch split).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from pydantic import Field

from lorapipe.plugin import ObjectiveLoss, Options, PairObjective, hookimpl

if TYPE_CHECKING:
    import torch


class OrpoOptions(Options):
    beta: float = Field(0.1, gt=0)  # the weight of the odds-ratio term (the paper's λ)


class OrpoObjective(PairObjective):
    """ORPO on preference pairs: NLL of the chosen side plus an odds-ratio penalty."""

    name = "orpo"
    Options = OrpoOptions
    metrics = (*PairObjective.metrics, "nll", "log_odds_ratio")

    def loss(self, model: torch.nn.Module, batch: dict[str, torch.Tensor], *,
             fused: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
             ) -> ObjectiveLoss:
        import torch
        import torch.nn.functional as F

        from lorapipe.plugin import pair_metrics, sequence_logps

        beta = self.options.beta
        policy = sequence_logps(model, batch)
        chosen, rejected = policy.per_token()
        # log(p / (1 - p)) of each side's mean per-token probability p
        log_odds = ((chosen - rejected)
                    - (torch.log1p(-torch.exp(chosen)) - torch.log1p(-torch.exp(rejected))))
        ratio = F.logsigmoid(log_odds)
        nll = -chosen
        metrics = pair_metrics(beta * chosen, beta * rejected, policy)
        metrics.update(nll=float(nll.detach().sum()), log_odds_ratio=float(ratio.detach().sum()))
        return ObjectiveLoss((nll - beta * ratio).sum(), metrics)


@hookimpl
def lorapipe_register_objectives(register):  # noqa: ANN001, ANN201 - pluggy hook
    register(OrpoObjective)
