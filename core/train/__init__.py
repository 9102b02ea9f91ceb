"""The ``train`` stage: a LoRA training loop on accelerate, with the state it saves spelled out.

One module per concern: ``batching`` (what a batch is), ``loss`` (exact token-mean
accumulation), ``optim`` and ``schedule`` (the update rule), ``checkpoint`` (what is saved
and how it is verified), ``guard`` (non-finite steps), ``interrupt`` (SIGINT/SIGTERM),
``metrics`` (metrics.jsonl / TensorBoard), ``loop`` (the loop itself) and ``stage``
(wiring to the run directory).
"""

from lorapipe.train.loop import train

__all__ = ["train"]
