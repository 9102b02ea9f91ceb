"""The ``dpo`` objective: Direct Preference Optimization against the reference model,
which is the model itself with its adapters off (no second copy in memory).

``loss_type``: ``sigmoid`` (DPO; with ``label_smoothing`` ε the conservative cDPO,
``-(1-ε)·logσ(βΔ) - ε·logσ(-βΔ)``), ``ipo`` (IPO, on the log-ratio per trained token, as
TRL and the IPO authors normalise it) or ``hinge`` (SLiC). Δ is the chosen side's
log-ratio against the reference minus the rejected side's; each pair's loss is summed,
and the loop averages over every pair of a step.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Literal

from pydantic import Field, model_validator

from lorapipe.plugin import ObjectiveLoss, Options, PairObjective, hookimpl

if TYPE_CHECKING:
    import torch


class DpoOptions(Options):
    beta: float = Field(0.1, gt=0)  # how far from the reference the policy may move
    loss_type: Literal["sigmoid", "ipo", "hinge"] = "sigmoid"
    # cDPO: the probability that a pair's preference label is wrong (sigmoid only)
    label_smoothing: float = Field(0.0, ge=0, lt=0.5)
    # compute the reference log-probabilities once at the start (kept in the run's
    # reference/ for this base and data) instead of a reference forward every step
    precompute_reference: bool = False

    @model_validator(mode="after")
    def _smoothing_needs_sigmoid(self) -> DpoOptions:
        if self.label_smoothing and self.loss_type != "sigmoid":
            raise ValueError(f"label_smoothing applies to loss_type sigmoid, not "
                             f"{self.loss_type}; set it to 0")
        return self


class DpoObjective(PairObjective):
    """DPO on preference pairs (``chosen``/``rejected``); the reference is the base."""

    name = "dpo"
    Options = DpoOptions

    @property
    def precomputes(self) -> bool:
        return self.options.precompute_reference

    def loss(self, model: torch.nn.Module, batch: dict[str, torch.Tensor], *,
             fused: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
             ) -> ObjectiveLoss:
        import torch.nn.functional as F

        from lorapipe.plugin import pair_metrics, reference_logps, sequence_logps

        beta, smoothing = self.options.beta, self.options.label_smoothing
        policy = sequence_logps(model, batch)
        if "reference" in batch:  # precompute_reference: computed once at the start
            pairs = len(policy.chosen)
            reference_chosen, reference_rejected = batch["reference"].split(pairs)
        else:
            reference = reference_logps(model, batch)
            reference_chosen, reference_rejected = reference.chosen, reference.rejected
        chosen = policy.chosen - reference_chosen
        rejected = policy.rejected - reference_rejected
        if self.options.loss_type == "ipo":
            delta = chosen / policy.chosen_tokens - rejected / policy.rejected_tokens
            losses = (delta - 1 / (2 * beta)) ** 2
        elif self.options.loss_type == "hinge":
            losses = F.relu(1 - beta * (chosen - rejected))
        else:
            delta = chosen - rejected
            losses = (-(1 - smoothing) * F.logsigmoid(beta * delta)
                      - smoothing * F.logsigmoid(-beta * delta))
        return ObjectiveLoss(losses.sum(), pair_metrics(beta * chosen, beta * rejected, policy))


@hookimpl
def lorapipe_register_objectives(register):  # noqa: ANN001, ANN201 - pluggy hook
    register(DpoObjective)
