"""Messages of the libraries lorapipe drives that would mislead its users, said plainly.

bitsandbytes 0.50, imported on a CPU with AVX512-BF16, tries to fetch an optional faster
4-bit kernel from the Hugging Face hub (``kernels-community``). Offline, or refused by
the ``kernels`` package, it logs the failure with that package's advice to set
``trust_remote_code=True``. Nothing is wrong: bitsandbytes' built-in CPU code computes
the same 4-bit layers, and lowering the setting would only run downloaded code. The
message is replaced by one line that says so, once per process.
"""

from __future__ import annotations

import logging

BNB_CPU_LOGGER = "bitsandbytes.backends.cpu.ops"
HUB_KERNEL_FAILURE = "Failed to load CPU gemm_4bit_forward from kernels-community"
HUB_KERNEL_NOTE = ("note: bitsandbytes' optional CPU kernel from the Hugging Face hub is not "
                   "available here, so 4-bit layers run on its built-in CPU code (same "
                   "results). Keep model.trust_remote_code off: this does not need it")


class _HubKernelNote(logging.Filter):
    said = False

    def filter(self, record: logging.LogRecord) -> bool:
        if not str(record.msg).startswith(HUB_KERNEL_FAILURE):
            return True
        if _HubKernelNote.said:
            return False
        _HubKernelNote.said = True
        record.msg, record.args = HUB_KERNEL_NOTE, ()
        return True


def quiet_misleading_messages() -> None:
    """Install the replacements (before the libraries are imported; idempotent)."""
    logger = logging.getLogger(BNB_CPU_LOGGER)
    if not any(isinstance(f, _HubKernelNote) for f in logger.filters):
        logger.addFilter(_HubKernelNote())
