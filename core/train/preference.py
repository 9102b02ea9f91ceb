"""What preference objectives (``dpo``, ``simpo``, ``orpo``) compute from a micro batch of
pairs: each side's summed log-probability of its trained tokens, and the same under the
reference model, which is the model itself with its adapters switched off (no second
copy in memory).

A pair batch is the chosen rows, then the rejected rows in the same order
(``batching.collate_pairs``): one forward scores both.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import NamedTuple

import torch

from lorapipe.train.loss import MODEL_INPUTS, trained_logits


class SideLogps(NamedTuple):
    """Per pair: the summed log-probabilities of the trained tokens and their number."""

    chosen: torch.Tensor  # (pairs,) fp32
    rejected: torch.Tensor
    chosen_tokens: torch.Tensor  # (pairs,) fp32 counts
    rejected_tokens: torch.Tensor

    def per_token(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Each side's mean log-probability per trained token (SimPO's, ORPO's score)."""
        return self.chosen / self.chosen_tokens, self.rejected / self.rejected_tokens


def sequence_logps(model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> SideLogps:
    """Each side's log-probability of its trained tokens (fp32), from one forward."""
    sums, counts = row_logps(model, batch)
    pairs = batch["input_ids"].shape[0] // 2
    return SideLogps(sums[:pairs], sums[pairs:], counts[:pairs], counts[pairs:])


def row_logps(model: torch.nn.Module,
              batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Per row of ``batch``: the summed log-probability of its trained tokens (fp32) and
    their number; the output head runs on the trained positions only (``trained_logits``)."""
    logits, targets, keep = trained_logits(model, batch)
    token_logps = torch.log_softmax(logits.float(), dim=-1).gather(
        -1, targets.unsqueeze(-1)).squeeze(-1)
    rows = keep.nonzero()[:, 0]  # the row of each trained token
    sums = torch.zeros(keep.shape[0], dtype=torch.float32, device=logits.device)
    return sums.index_add(0, rows, token_logps), keep.sum(dim=1).float()


@contextlib.contextmanager
def adapters_off(model: torch.nn.Module) -> Iterator[None]:
    """The reference model: ``model`` (a PeftModel, maybe wrapped by DDP) without its
    adapters, and without gradients."""
    peft_model = getattr(model, "module", model)
    with torch.no_grad(), peft_model.disable_adapter():
        yield


def reference_logps(model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> SideLogps:
    with adapters_off(model):
        return sequence_logps(model, batch)


def batch_rows(batch: dict[str, torch.Tensor], start: int, stop: int) -> dict[str, torch.Tensor]:
    """The rows ``start:stop`` of a micro batch's model inputs and labels."""
    return {key: batch[key][start:stop] for key in (*MODEL_INPUTS, "labels") if key in batch}


def pair_metrics(chosen_rewards: torch.Tensor, rejected_rewards: torch.Tensor,
                 policy: SideLogps) -> dict[str, float]:
    """``components.PAIR_METRICS`` as sums over the batch's pairs (the loop reports means): the
    implicit rewards, their margin, how often the chosen side's is higher (TRL's
    ``rewards/accuracies``), and each side's summed log-probability."""
    chosen, rejected = chosen_rewards.detach(), rejected_rewards.detach()
    return {"reward_chosen": float(chosen.sum()), "reward_rejected": float(rejected.sum()),
            "reward_margin": float((chosen - rejected).sum()),
            "reward_accuracy": float((chosen > rejected).sum()),
            "logp_chosen": float(policy.chosen.detach().sum()),
            "logp_rejected": float(policy.rejected.detach().sum())}
