"""The ``objective`` kind's base classes (on ``component.Component``): what training
minimises, the loss an objective returns, and the base of objectives on preference pairs.

Plugin authors import these through ``lorapipe.plugin``; ``components.KINDS`` lists the
kind with the others.
"""

from __future__ import annotations

from abc import abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, ClassVar

from lorapipe.component import Component

if TYPE_CHECKING:  # the loop imports torch; an objective's module need not
    import torch


@dataclass(frozen=True)
class ObjectiveLoss:
    """A micro batch's loss and metrics, each a *sum* over its ``Objective.count`` units."""

    total: torch.Tensor  # scalar, fp32, with the graph the loop backpropagates
    metrics: dict[str, float] = field(default_factory=dict)  # one per ``Objective.metrics``


# What a preference objective reads (the rejected side next to the chosen one, which the
# prepared data keeps in input_ids/labels) and reports, as the built-ins do.
PAIR_COLUMNS = ("input_ids", "labels", "rejected_input_ids", "rejected_labels")
PAIR_METRICS = ("reward_chosen", "reward_rejected", "reward_margin", "reward_accuracy",
                "logp_chosen", "logp_rejected")


def records_for(columns: tuple[str, ...]) -> str | None:
    """The record kind every training example must be for an objective reading
    ``columns``: ``preference`` (the rejected side too), ``unpaired`` (a ``desirable``
    rating) or ``None`` (any: ``sft`` trains a pair's chosen side)."""
    if "rejected_input_ids" in columns:
        return "preference"
    return "unpaired" if "desirable" in columns else None


class Objective(Component):
    """What training minimises: the loss of a batch of prepared data.

    The loop keeps the rest (accumulation, clipping, guards, checkpoints, DDP/FSDP2,
    trackers) and normalises exactly: each micro batch's ``loss`` is a sum over its
    ``count`` units (trainable tokens for ``sft``, pairs for a preference objective), and
    the step's gradient is that of the mean over every unit of the step on every process,
    however the step is split. The validation loss during training is the same mean.

    ``columns`` are the prepared data's columns it reads; training refuses data without
    them. ``metrics`` name what ``loss`` reports besides the loss: metrics.jsonl and the
    trackers show each as a mean per unit (``eval_<name>`` on the validation set).
    """

    kind = "objective"
    plural = "objectives"
    columns: ClassVar[tuple[str, ...]] = ("input_ids", "labels")
    metrics: ClassVar[tuple[str, ...]] = ()

    @abstractmethod
    def count(self, batch: dict[str, torch.Tensor]) -> int:
        """The units ``loss`` sums over in ``batch``. Known without a forward: the loop
        totals them over the step first, to scale every micro batch's backward."""

    @abstractmethod
    def loss(self, model: torch.nn.Module, batch: dict[str, torch.Tensor], *,
             fused: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
             ) -> ObjectiveLoss:
        """The loss of ``batch`` summed over its units, in fp32, and its metrics' sums.

        ``batch`` is a micro batch as the loop collates it: ``input_ids``, ``labels``
        (-100 where not trained), and ``attention_mask`` or, packed, ``position_ids``.
        ``model`` may be wrapped (DDP, FSDP2): call it whole, so the wrapper sees the
        forward. ``fused(hidden, targets)`` is, under ``train.kernels: liger``, the output
        head and the summed cross-entropy in one chunked kernel (no logits); else ``None``.
        """

    @property
    def precomputes(self) -> bool:
        """Whether the loop should compute ``reference`` once for every training example
        at the start and hand it to ``loss`` as ``batch["reference"]``."""
        return False

    def reference(self, model: torch.nn.Module,
                  batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """Per row of ``batch``, what depends on the base model alone, for ``precomputes``
        (the loop calls it with the adapters off): by default each row's log-probability
        of its trained tokens, a preference objective's reference."""
        from lorapipe.train.preference import row_logps

        return row_logps(model, batch)[0]


class PairObjective(Objective):
    """An objective on preference pairs: its micro batches are the chosen rows, then the
    rejected rows in the same order, and it counts pairs (``dpo``, ``simpo``, ``orpo``)."""

    columns = PAIR_COLUMNS
    metrics = PAIR_METRICS

    def count(self, batch: dict[str, torch.Tensor]) -> int:
        return int(batch["input_ids"].shape[0]) // 2
