"""Memory pressure while training: warn before the out-of-memory kill, not after it.

The estimate before training can be wrong (fragmentation, long batches late in an epoch,
another process), and on the CPU the kernel's OOM killer gives no traceback at all. At
every logged step the process's memory is compared with the device's capacity — RSS
with the machine's RAM on the CPU, CUDA reserved memory with the GPU's — and each of
80%, 90% and 95% is reported once, when first crossed. With ``train.auto_batch`` the
memory is also read after every micro batch, and a step that reaches 95% is abandoned
before its update and retried at half the micro batch, as after an out-of-memory error.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import torch
from tqdm.auto import tqdm

from lorapipe.model.memory import device_capacity
from lorapipe.train.distributed import sum_over

if TYPE_CHECKING:
    from accelerate import Accelerator

    from lorapipe.train.accumulation import Accumulation

LEVELS = (0.80, 0.90, 0.95)


class MemoryPressure(Exception):  # noqa: N818 - a condition, not an error to report
    """A step abandoned before its update because memory reached the last level."""

    def __init__(self, fraction: float) -> None:
        super().__init__(f"memory at {fraction:.0%} of the device's capacity")
        self.fraction = fraction


class MemoryWatch:
    """The process's memory against the device's capacity, and auto_batch's answer when
    it runs short.

    ``batches`` is the run's split of each step (what to advise, what auto_batch makes
    finer); ``log`` writes a metrics.jsonl record (the main process's).
    """

    def __init__(self, accelerator: Accelerator, *, optimizer: torch.optim.Optimizer,
                 memory: Callable[[], dict[str, Any]], batches: Accumulation,
                 log: Callable[[dict[str, Any]], None]) -> None:
        device = str(accelerator.device)
        self.cuda = device.startswith("cuda")
        self.capacity = device_capacity(device)["total_bytes"]
        self.reported: set[float] = set()
        self.accelerator, self.optimizer, self.memory = accelerator, optimizer, memory
        self.batches, self.log = batches, log
        several = accelerator.num_processes > 1  # then printed lines say whose memory
        self.process = f"process {accelerator.process_index}: " if several else ""

    def fraction(self, snapshot: dict[str, Any]) -> float:
        used = snapshot.get("cuda_reserved_bytes", 0) if self.cuda else snapshot["rss_bytes"]
        return used / self.capacity

    def crossed(self, snapshot: dict[str, Any]) -> tuple[float, float] | None:
        """(highest level newly crossed, fraction in use), or None if nothing new."""
        fraction = self.fraction(snapshot)
        new = [level for level in LEVELS if fraction >= level and level not in self.reported]
        self.reported.update(new)
        return (max(new), fraction) if new else None

    def report(self, snapshot: dict[str, Any], *, step: int) -> None:
        """Report a newly crossed level with what to change (each process prints its own;
        metrics.jsonl holds the main process's)."""
        crossed = self.crossed(snapshot)
        if crossed is None:
            return
        level, fraction = crossed
        advice = self.batches.memory_advice()
        self.log({"step": step, "event": "memory_pressure", "level": level,
                  "fraction": round(fraction, 4), "suggestion": advice})
        tqdm.write(f"step {step}: {self.process}memory at {fraction:.0%} of the "
                   f"device's capacity. Try: {advice}")

    def check_pressure(self) -> None:
        """auto_batch: after a micro batch, memory at 95% of the device's on any process
        abandons the step before its update (``MemoryPressure``), to be retried split finer
        like an out-of-memory error."""
        if not self.batches.can_split():
            return
        fraction = self.fraction(self.memory())
        if sum_over(self.accelerator, float(fraction >= LEVELS[-1]))[0]:  # all decide alike
            self.optimizer.zero_grad(set_to_none=True)
            raise MemoryPressure(fraction)

    def split_finer(self, err: torch.OutOfMemoryError | MemoryPressure, *, step: int) -> None:
        """auto_batch: drop the abandoned ``step``'s gradients so that it can be retried with
        a smaller micro batch and more accumulation (accumulation.py: the same samples,
        weighted the same).

        Out of memory without auto_batch, or at a micro batch of 1, raises a RuntimeError
        (from ``err``) that says what to change instead.
        """
        if isinstance(err, MemoryPressure):
            self.log({"step": step, "event": "memory_pressure", "level": LEVELS[-1],
                      "fraction": round(err.fraction, 4),
                      "action": "retry at half the micro batch"})
        elif not self.batches.can_split():
            raise RuntimeError(self.batches.oom_advice(step)) from err
        self.optimizer.zero_grad(set_to_none=True)
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
        self.batches.split_finer()
        self.log({"step": step, "event": "auto_batch",
                  "micro_batch_size": self.batches.micro_batch_size,
                  "gradient_accumulation_steps": self.batches.steps})
