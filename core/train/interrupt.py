"""SIGINT / SIGTERM ask the loop to stop after the current step, not in the middle of it.

A half-done step would leave gradients accumulated and no consistent state to save; the
loop instead finishes the step, writes a checkpoint and then exits (exit
130 with a message saying how to resume). A second Ctrl-C stops at once.
"""

from __future__ import annotations

import signal
from collections.abc import Iterator
from contextlib import contextmanager


class StopRequest:
    def __init__(self) -> None:
        self.signal_name: str | None = None

    def __bool__(self) -> bool:
        return self.signal_name is not None

    def _handle(self, signum: int, frame) -> None:  # noqa: ANN001
        if self.signal_name is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.signal_name = signal.Signals(signum).name


@contextmanager
def stop_on_signals() -> Iterator[StopRequest]:
    """Install the handlers for the duration of training (main thread only)."""
    request = StopRequest()
    previous = {sig: signal.signal(sig, request._handle) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield request
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


class TrainingInterrupted(KeyboardInterrupt):
    """Raised after the checkpoint is written; the CLI turns it into exit code 130."""
