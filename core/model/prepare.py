"""Freezing the base and switching on gradient checkpointing, shared by the quantizers
(public through ``lorapipe.plugin``; imports nothing heavy)."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from transformers import PreTrainedModel

# Non-reentrant checkpointing works with frozen inputs and is what PyTorch recommends.
CHECKPOINTING_KWARGS = {"use_reentrant": False}


def enable_checkpointing(model: PreTrainedModel) -> None:
    """Recompute activations in backward instead of storing them.

    Non-reentrant checkpointing recomputes a block for the adapters inside it even when
    its input needs no gradient, so the embedding output is left without one (the
    reentrant kind needs ``enable_input_require_grads``, which costs a backward through
    the first block's frozen input projections).
    """
    enable = getattr(model, "activation_checkpointing_enable", None)  # transformers >= 5.x
    if enable is not None:
        enable(activation_checkpointing_kwargs=CHECKPOINTING_KWARGS)
    else:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=CHECKPOINTING_KWARGS)


def freeze(model: PreTrainedModel) -> None:
    for param in model.parameters():
        param.requires_grad_(False)
