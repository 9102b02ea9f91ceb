"""The ``kto`` objective: Kahneman-Tversky Optimization on replies rated desirable or not
(unpaired: ``prompt`` + ``completion`` + ``label``), against the reference model (the
model with its adapters off).

Per example, ``1 - σ(β·(r - z))`` for a desirable reply and ``1 - σ(β·(z - r))`` for an
undesirable one, weighted by ``desirable_weight`` / ``undesirable_weight``; ``r`` is the
reply's log-ratio against the reference and ``z`` the KL estimate: the mean over the micro
batch of each example's KL row (its prompt with the previous prepared example's reply,
fixed before the shuffle as TRL fixes them), without gradient, clamped at 0; a larger
micro batch gives a steadier estimate.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from pydantic import Field

from lorapipe.plugin import Objective, ObjectiveLoss, Options, hookimpl

if TYPE_CHECKING:
    import torch


class KtoOptions(Options):
    beta: float = Field(0.1, gt=0)
    # weigh the two kinds so that desirable × their count ≈ undesirable × theirs (the KTO
    # paper recommends a ratio between 1 and 4/3)
    desirable_weight: float = Field(1.0, gt=0)
    undesirable_weight: float = Field(1.0, gt=0)
    # compute the reference log-probabilities (of the replies and the KL rows) once at the
    # start (kept in the run's reference/ for this base and data), not at every step
    precompute_reference: bool = False


class KtoObjective(Objective):
    """KTO on replies labelled desirable or undesirable; the reference is the base."""

    name = "kto"
    Options = KtoOptions
    columns = ("input_ids", "labels", "desirable")
    metrics = ("reward_desirable", "reward_undesirable", "desirable", "kl")

    def count(self, batch: dict[str, torch.Tensor]) -> int:
        return int(batch["desirable"].shape[0])

    @property
    def precomputes(self) -> bool:
        return self.options.precompute_reference

    def loss(self, model: torch.nn.Module, batch: dict[str, torch.Tensor], *,
             fused: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
             ) -> ObjectiveLoss:
        import torch

        from lorapipe.plugin import adapters_off, batch_rows, row_logps

        n = self.count(batch)
        examples, mismatched = batch_rows(batch, 0, n), batch_rows(batch, n, 2 * n)
        policy, _ = row_logps(model, examples)
        with torch.no_grad():
            policy_kl, _ = row_logps(model, mismatched)
        if "reference" in batch:  # precompute_reference: computed once at the start
            reference, reference_kl = batch["reference"].split(n)
        else:
            with adapters_off(model):  # both kinds of row in one forward
                reference, reference_kl = row_logps(model, batch)[0].split(n)
        beta, options = self.options.beta, self.options
        kl = (policy_kl - reference_kl).mean().clamp(min=0)
        ratio = policy - reference
        desirable = batch["desirable"].bool()
        losses = torch.where(desirable,
                             options.desirable_weight * (1 - torch.sigmoid(beta * (ratio - kl))),
                             options.undesirable_weight * (1 - torch.sigmoid(beta * (kl - ratio))))
        rewards = beta * ratio.detach()
        metrics = {"reward_desirable": float(rewards[desirable].sum()),
                   "reward_undesirable": float(rewards[~desirable].sum()),
                   "desirable": float(desirable.sum()), "kl": float(kl) * n}
        return ObjectiveLoss(losses.sum(), metrics)


@hookimpl
def lorapipe_register_objectives(register):  # noqa: ANN001, ANN201 - pluggy hook
    register(KtoObjective)
