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

from typing import Any

from lorapipe.model.memory import device_capacity

LEVELS = (0.80, 0.90, 0.95)


class MemoryPressure(Exception):  # noqa: N818 - a condition, not an error to report
    """A step abandoned before its update because memory reached the last level."""

    def __init__(self, fraction: float) -> None:
        super().__init__(f"memory at {fraction:.0%} of the device's capacity")
        self.fraction = fraction


class MemoryWatch:
    def __init__(self, device: str) -> None:
        self.cuda = device.startswith("cuda")
        self.capacity = device_capacity(device)["total_bytes"]
        self.reported: set[float] = set()

    def fraction(self, snapshot: dict[str, Any]) -> float:
        used = snapshot.get("cuda_reserved_bytes", 0) if self.cuda else snapshot["rss_bytes"]
        return used / self.capacity

    def crossed(self, snapshot: dict[str, Any]) -> tuple[float, float] | None:
        """(highest level newly crossed, fraction in use), or None if nothing new."""
        fraction = self.fraction(snapshot)
        new = [level for level in LEVELS if fraction >= level and level not in self.reported]
        self.reported.update(new)
        return (max(new), fraction) if new else None
