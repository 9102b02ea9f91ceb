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

from lorapipe.train.batching import IGNORE
from lorapipe.train.loss import MODEL_INPUTS


class SideLogps(NamedTuple):
    """Per pair: the summed log-probabilities of the trained tokens and their number."""

    chosen: torch.Tensor  # (pairs,) fp32
    rejected: torch.Tensor
    chosen_tokens: torch.Tensor  # (pairs,) fp32 counts
    rejected_tokens: torch.Tensor

    def per_token(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Each side's mean log-probability per trained token (SimPO's, ORPO's score)."""
        return self.chosen / self.chosen_tokens, self.rejected / self.rejected_tokens


def pairs_in(batch: dict[str, torch.Tensor]) -> int:
    return batch["input_ids"].shape[0] // 2


def sequence_logps(model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> SideLogps:
    """Each side's log-probability of its trained tokens (fp32), from one forward."""
    sums, counts = row_logps(model, batch)
    pairs = pairs_in(batch)
    return SideLogps(sums[:pairs], sums[pairs:], counts[:pairs], counts[pairs:])


def row_logps(model: torch.nn.Module,
              batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Per row of ``batch``: the summed log-probability of its trained tokens (fp32) and
    their number.

    As ``loss_sum`` does, the output head sees only the positions whose next token is
    trained (a pre-hook selects them), so no (rows, length, vocab) logits are held.
    """
    inputs = {key: batch[key] for key in MODEL_INPUTS if key in batch}
    targets = batch["labels"][:, 1:]
    keep = targets != IGNORE

    def trained_positions(_module: torch.nn.Module, args: tuple) -> tuple:
        return (args[0][:, :-1][keep], *args[1:])

    head = getattr(model, "module", model).get_output_embeddings()
    handle = head.register_forward_pre_hook(trained_positions)
    try:
        logits = model(**inputs, use_cache=False).logits  # (trained tokens, vocab)
    finally:
        handle.remove()
    token_logps = torch.log_softmax(logits.float(), dim=-1).gather(
        -1, targets[keep].unsqueeze(-1)).squeeze(-1)
    rows = keep.nonzero()[:, 0]  # the row of each trained token
    sums = torch.zeros(keep.shape[0], dtype=torch.float32, device=logits.device)
    sums = sums.index_add(0, rows, token_logps)
    return sums, keep.sum(dim=1).float()


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
