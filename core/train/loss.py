"""Loss normalised exactly over an optimizer step, and the ``sft`` objective's loss.

A mean of per-micro-batch means weights a token in a short micro-batch more than one in
a long micro-batch, so changing the micro batch or the accumulation would change the
result. Here every micro-batch contributes its loss *sum* (the objective's, over its
units: trainable tokens for ``sft``), divided by the units of the whole step on all
processes (``backward_scale``), so the step's gradient is the gradient of the mean over
all its units, however the step is split.

``loss_sum`` and ``trainable_tokens`` are the ``sft`` objective's (public through
``lorapipe.plugin``). We compute the cross-entropy ourselves rather than pass ``labels``
to the model so the sum and the count are ours to normalise.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

from lorapipe.train.batching import IGNORE

MODEL_INPUTS = ("input_ids", "attention_mask", "position_ids")


def trainable_tokens(batch: dict[str, torch.Tensor]) -> int:
    """Tokens that are prediction targets: labels after the causal shift that are not -100."""
    return int((batch["labels"][:, 1:] != IGNORE).sum())


def loss_sum(model: torch.nn.Module, batch: dict[str, torch.Tensor],
             fused: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
             ) -> torch.Tensor:
    """Sum of the next-token cross-entropy over the batch's trainable tokens (fp32).

    ``fused(hidden, targets)`` (train.kernels: liger) computes the head and the loss in
    chunks without any logits; the head itself then runs on zero rows.
    """
    trained: list[torch.Tensor] = []
    logits, targets, _ = trained_logits(model, batch, None if fused is None else trained)
    if fused is not None:
        return fused(trained[0], targets).float()
    return F.cross_entropy(logits.float(), targets, reduction="sum")


def trained_logits(model: torch.nn.Module, batch: dict[str, torch.Tensor],
                   hidden_out: list[torch.Tensor] | None = None,
                   ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The output head's logits at the positions whose next token is trained (one row per
    trained token), those tokens, and the (rows, length - 1) mask of where they are.

    The head only sees those positions' hidden states (a pre-hook selects them), so prompt
    and padding positions cost no head matmul and no (batch, length, vocab) logits are held
    for backward. The hook runs inside the model's forward, so DDP and PEFT wrappers see an
    ordinary call. With ``hidden_out`` the selected hidden states are appended to it and
    the head runs on zero rows (a fused head-and-loss kernel takes them instead).
    """
    inputs = {key: batch[key] for key in MODEL_INPUTS if key in batch}
    targets = batch["labels"][:, 1:]
    keep = targets != IGNORE

    def trained_positions(_module: torch.nn.Module, args: tuple) -> tuple:
        hidden = args[0][:, :-1][keep]
        if hidden_out is None:
            return (hidden, *args[1:])
        hidden_out.append(hidden)
        return (hidden[:0], *args[1:])

    head = getattr(model, "module", model).get_output_embeddings()  # DDP keeps it in .module
    handle = head.register_forward_pre_hook(trained_positions)
    try:
        logits = model(**inputs, use_cache=False).logits
    finally:
        handle.remove()
    return logits, targets[keep], keep


def backward_scale(step_count: int, world_size: int) -> float:
    """Factor turning a micro-batch's loss sum into its share of the step's mean over the
    objective's ``count`` units (tokens for ``sft``).

    DDP averages gradients over processes, i.e. divides by ``world_size``; multiplying by
    it here cancels that, leaving sum-over-all-units / all-units.
    """
    return world_size / max(step_count, 1)
