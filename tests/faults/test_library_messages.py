"""bitsandbytes' advice to set trust_remote_code=True (when its optional hub kernel cannot
be fetched) never reaches users; one plain line does, once."""

from __future__ import annotations

import inspect
import logging

import pytest

from lorapipe import library_messages
from lorapipe.library_messages import (
    BNB_CPU_LOGGER,
    HUB_KERNEL_FAILURE,
    HUB_KERNEL_NOTE,
    quiet_misleading_messages,
)


def test_the_filter_matches_what_bitsandbytes_logs() -> None:
    """The message and the logger are bitsandbytes' own (read from its source), so a
    release that rewords them fails here instead of leaking the advice again."""
    import bitsandbytes.backends.cpu.ops as ops

    source = inspect.getsource(ops)
    assert HUB_KERNEL_FAILURE in source
    assert ops.logger.name == BNB_CPU_LOGGER


def test_the_advice_is_replaced_by_one_plain_line(caplog: pytest.LogCaptureFixture,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(library_messages._HubKernelNote, "said", False)
    quiet_misleading_messages()
    quiet_misleading_messages()  # idempotent: one filter
    logger = logging.getLogger(BNB_CPU_LOGGER)
    assert sum(isinstance(f, library_messages._HubKernelNote) for f in logger.filters) == 1
    refused = ValueError("Loading kernels-community/quantization-bitsandbytes requires "
                         "executing code from the Hub. Set trust_remote_code=True")
    with caplog.at_level(logging.WARNING, logger=BNB_CPU_LOGGER):
        for _ in range(3):  # as bitsandbytes words it
            logger.warning(f"{HUB_KERNEL_FAILURE}: %s. Please make sure you already `pip "
                           "install kernels` and the kernels >= 0.11.1", refused)
        logger.warning("another bitsandbytes warning")
    messages = [record.getMessage() for record in caplog.records]
    assert messages == [HUB_KERNEL_NOTE, "another bitsandbytes warning"]
    assert "trust_remote_code=True" not in " ".join(messages)
