"""The ``train`` stage: a LoRA training loop on accelerate, with the state it saves spelled out.

One module per concern:

- ``loop``: the loop itself (``Trainer.run``, ``Trainer.step``) and its entry,
  ``train(model, train_data, validation_data, TrainSetup(...))``; ``stage``: wiring to the
  run directory (it fills the ``TrainSetup``)
- ``batching``: what a batch is (order, packing, padding); ``accumulation``: which micro
  batches this process trains each step on, and auto_batch's finer split
- ``loss``: exact accumulation over the objective's units (``train.objective``, a
  plugin) and the ``sft`` objective's loss; ``optim`` and ``schedule``: the update rule
- ``evaluation``: the validation loss during training, the best step, early stopping
- ``checkpoint``: what is saved and how it is verified; ``resume``: saving from every
  process and continuing from a checkpoint (``--resume``, rollbacks); ``publish``: the
  run's summary and adapter/
- ``guard``: non-finite steps and spikes; ``memory_watch``: memory pressure and
  auto_batch's retries; ``interrupt``: SIGINT/SIGTERM; ``distributed``: one process, DDP
  or FSDP2
- ``metrics``: metrics.jsonl and the window of steps one line sums up; ``trackers``: the
  same records sent to TensorBoard, W&B and MLflow
"""

from lorapipe.train.loop import TrainSetup, train

__all__ = ["TrainSetup", "train"]
