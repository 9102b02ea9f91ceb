"""The ``sft`` objective: supervised fine-tuning, next-token cross-entropy on the trained
tokens (the chat template's mask), as a mean over every trained token of a step."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from lorapipe.plugin import Objective, ObjectiveLoss, hookimpl

if TYPE_CHECKING:
    import torch


class SftObjective(Objective):
    """Next-token cross-entropy on the trained tokens (the default)."""

    name = "sft"

    def count(self, batch: dict[str, torch.Tensor]) -> int:
        from lorapipe.plugin import trainable_tokens

        return trainable_tokens(batch)

    def loss(self, model: torch.nn.Module, batch: dict[str, torch.Tensor], *,
             fused: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
             ) -> ObjectiveLoss:
        from lorapipe.plugin import loss_sum

        return ObjectiveLoss(loss_sum(model, batch, fused))


@hookimpl
def lorapipe_register_objectives(register):  # noqa: ANN001, ANN201 - pluggy hook
    register(SftObjective)
