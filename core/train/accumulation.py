"""Gradient accumulation: which micro batches this process trains each optimizer step on,
and how ``train.auto_batch`` splits them finer when memory runs short.

A step is planned as one *effective* batch (micro batch × accumulation × processes) before
it is split (batching.py), and its loss is normalised by the whole step's trainable tokens
(loss.py). So dividing the micro batch by a factor and multiplying the accumulation by it
changes neither which samples a step holds nor how they are weighted: a step retried after
an out-of-memory error trains on the same tokens, and a resumed run on the same steps.
"""

from __future__ import annotations

import torch

from lorapipe.config import TrainConfig
from lorapipe.errors import ConfigError, UserError
from lorapipe.train.batching import (
    Example,
    Item,
    Pair,
    Rated,
    collate,
    collate_pairs,
    collate_rated,
    epoch_steps,
    example_length,
    load_examples,
    pack,
)
from lorapipe.train.checkpoint import TrainState


class Accumulation:
    """This process's share of every step: the data plan, the micro batch size and the
    number of micro batches accumulated per step (auto_batch may trade the first for the
    second; the effective batch stays)."""

    def __init__(self, train_data, config: TrainConfig, *, max_length: int,  # noqa: ANN001
                 pad_token_id: int, world: int, rank: int, layout: str = "single") -> None:
        self.config, self.pad, self.world, self.rank = config, pad_token_id, world, rank
        self.micro_batch_size = config.micro_batch_size
        self.steps = config.gradient_accumulation_steps  # micro batches per optimizer step
        self.layout = layout  # batching.layout_for the objective's columns
        self.collate = {"single": collate, "pairs": collate_pairs,
                        "rated": collate_rated}[layout]
        self.examples: list[Example] | list[Pair] | list[Rated] = load_examples(
            train_data, layout=layout)
        lengths = [example_length(example) for example in self.examples]
        singles = [[i] for i in range(len(lengths))]
        packing = config.packing
        if packing == "auto":
            kinds = set(train_data["kind"]) if "kind" in train_data.column_names else set()
            packing = kinds == {"text"}
        if layout != "single" and (packing or config.padding_free):
            field = "train.packing" if packing else "train.padding_free"
            raise ConfigError(field, "a preference objective scores each example row by "
                                     "row; set it to false")
        self.items: list[Item] = pack(lengths, max_length) if packing else singles
        self.item_lengths = [sum(lengths[i] for i in item) for item in self.items]
        self.steps_per_epoch = len(self._plan(0))
        if self.steps_per_epoch == 0:
            raise UserError(
                f"train: {len(self.items)} training rows cannot fill one optimizer step of "
                f"{config.micro_batch_size * config.gradient_accumulation_steps * world}; "
                "lower train.micro_batch_size or train.gradient_accumulation_steps, or add data"
            )
        self._planned: tuple[int, list] = (-1, [])
        # precompute_reference: per example, the objective's reference values (one per row
        # it contributes: chosen, rejected), handed to each micro batch as "reference"
        self.reference: torch.Tensor | None = None

    def _plan(self, epoch: int) -> list[list[list[int]]]:
        c = self.config
        return epoch_steps(self.item_lengths, seed=c.seed, epoch=epoch,
                           micro_batch_size=self.micro_batch_size, accumulation=self.steps,
                           world_size=self.world, group_by_length=c.group_by_length)

    def next_step(self, state: TrainState) -> tuple[list[dict[str, torch.Tensor]], int]:
        """This process's micro batches of the step at ``state`` and their real (non-pad)
        token count.

        Advances ``state`` to the next epoch when the current one is used up.
        """
        if state.step_in_epoch >= self.steps_per_epoch:
            state.epoch, state.step_in_epoch = state.epoch + 1, 0
        if self._planned[0] != state.epoch:
            self._planned = (state.epoch, self._plan(state.epoch))
        step = self._planned[1][state.step_in_epoch]
        accum = self.steps
        mine = step[self.rank * accum:(self.rank + 1) * accum]
        rows = [[[self.examples[i] for i in self.items[item]] for item in micro]
                for micro in mine]
        if self.config.padding_free:  # one row per micro batch: examples end to end
            rows = [[[example for row in micro for example in row]] for micro in rows]
        batches = [self.collate(micro, self.pad) for micro in rows]
        if self.reference is not None:
            for batch, micro in zip(batches, mine, strict=True):
                index = torch.tensor([i for item in micro for i in self.items[item]])
                batch["reference"] = self.reference[index].T.reshape(-1)
        real = sum(self.item_lengths[item] for micro in mine for item in micro)
        return batches, real

    # --- auto_batch and out-of-memory advice --------------------------------------------

    def can_split(self) -> bool:
        """Whether auto_batch may retry a step split finer (not below a micro batch of 1)."""
        return self.config.auto_batch and self.micro_batch_size != 1

    def split_finer(self) -> None:
        """Divide the micro batch by its smallest factor (4 → 2, 3 → 1) and multiply the
        accumulation by it: the effective batch, and so every planned step, is unchanged."""
        factor = next(f for f in range(2, self.micro_batch_size + 1)
                      if self.micro_batch_size % f == 0)
        self.micro_batch_size //= factor
        self.steps *= factor
        self._planned = (-1, [])

    def oom_advice(self, step: int) -> str:
        """The error of an out-of-memory ``step`` that auto_batch cannot split finer."""
        return (f"out of memory at step {step} (the last checkpoint is "
                f"intact). Try: {self.memory_advice()}; then --resume")

    def memory_advice(self) -> str:
        """What to change when memory runs short, with the split in effect now."""
        return (
            f"a smaller train.micro_batch_size (now {self.micro_batch_size}) with a larger "
            f"train.gradient_accumulation_steps (now {self.steps}) for the same "
            "effective batch, train.gradient_checkpointing: true, a lower adapter.r, a "
            "shorter data.max_length, or model.quantizer: nf4 if not used (or set "
            "train.auto_batch: true to do the first automatically)")
