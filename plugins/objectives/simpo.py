"""The ``simpo`` objective: SimPO, preference optimisation without a reference model.

Each side is scored by its mean log-probability per trained token (so length does not
buy reward), and the chosen side must beat the rejected one by a margin:
``-logσ(β·(mean_c - mean_r) - γ)`` per pair. TRL computes it as ``CPOTrainer`` with
``loss_type: simpo`` and ``cpo_alpha: 0``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from pydantic import Field

from lorapipe.plugin import ObjectiveLoss, Options, PairObjective, hookimpl

if TYPE_CHECKING:
    import torch


class SimpoOptions(Options):
    beta: float = Field(2.0, gt=0)  # the SimPO paper's range is 2.0-2.5
    gamma: float = Field(1.0, ge=0)  # the target reward margin


class SimpoObjective(PairObjective):
    """SimPO on preference pairs: no reference forward, length-normalised rewards."""

    name = "simpo"
    Options = SimpoOptions

    def loss(self, model: torch.nn.Module, batch: dict[str, torch.Tensor], *,
             fused: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
             ) -> ObjectiveLoss:
        import torch.nn.functional as F

        from lorapipe.plugin import pair_metrics, sequence_logps

        beta = self.options.beta
        policy = sequence_logps(model, batch)
        chosen, rejected = policy.per_token()
        losses = -F.logsigmoid(beta * (chosen - rejected) - self.options.gamma)
        return ObjectiveLoss(losses.sum(), pair_metrics(beta * chosen, beta * rejected, policy))


@hookimpl
def lorapipe_register_objectives(register):  # noqa: ANN001, ANN201 - pluggy hook
    register(SimpoObjective)
