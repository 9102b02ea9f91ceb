"""Config dtype names → torch dtypes, and the device a run uses."""

from __future__ import annotations

import functools
from pathlib import Path

import torch

_NAMES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}


def default_device() -> str:
    """The device a run trains on: the first CUDA GPU if there is one, else the CPU."""
    return "cuda" if torch.cuda.is_available() else "cpu"


def resolve_dtype(name: str, *, device: str = "cpu") -> torch.dtype:
    """``auto`` is the fastest dtype that trains correctly on ``device``: bf16 where the
    hardware computes in it, else fp16 on a GPU and fp32 on the CPU.

    A CPU without bf16 units emulates bf16 matmuls (measured on this project's AVX2 CI
    machine: training 25x slower than in fp32, tests/bench/train_throughput.py), and fp16 loses
    precision there, so ``auto`` picks bf16 on a CPU only with AMX or AVX512-BF16; an
    explicit ``bf16``/``fp16`` is honoured anywhere.
    """
    if name != "auto":
        try:
            return _NAMES[name]
        except KeyError:
            raise ValueError(f"unknown dtype '{name}'; use auto, bf16, fp16 or fp32") from None
    if device.startswith("cuda"):
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.bfloat16 if cpu_computes_bf16() else torch.float32


@functools.cache
def cpu_computes_bf16() -> bool:
    """Whether this CPU has bf16 matrix units (AMX) or instructions (AVX512-BF16), as
    Linux reports them; elsewhere False, the safe answer."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    flags = next((line.split(":", 1)[1].split() for line in text.splitlines()
                  if line.startswith("flags")), [])
    return "amx_bf16" in flags or "avx512_bf16" in flags


def dtype_name(dtype: torch.dtype) -> str:
    return {v: k for k, v in _NAMES.items()}.get(dtype, str(dtype).removeprefix("torch."))
