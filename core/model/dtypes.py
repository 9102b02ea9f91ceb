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
    machine: training 25x slower than in fp32, tests/bench/train_throughput.py), and on a
    Xeon with AVX512-BF16 but no AMX whole-process training was slower in bf16 than in fp32
    (and accumulation lost its exactness), so ``auto`` picks bf16 on a CPU only with AMX
    tiles; fp16 loses precision there. An explicit ``bf16``/``fp16`` is honoured anywhere.
    """
    if name != "auto":
        try:
            return _NAMES[name]
        except KeyError:
            raise ValueError(f"unknown dtype '{name}'; use auto, bf16, fp16 or fp32") from None
    if device.startswith("cuda"):
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.bfloat16 if cpu_computes_bf16() else torch.float32


def cpu_computes_bf16() -> bool:
    """Whether this CPU has bf16 matrix units (AMX tiles), as Linux reports them;
    elsewhere False, the safe answer."""
    return "amx_bf16" in _cpu_flags()


@functools.cache
def _cpu_flags() -> frozenset[str]:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return frozenset()
    return frozenset(next((line.split(":", 1)[1].split() for line in text.splitlines()
                           if line.startswith("flags")), []))


def auto_dtype_reason(device: str) -> str:
    """Why ``auto`` resolved as it did on ``device``: what model_report.json records."""
    if device.startswith("cuda"):
        return ("bf16: the GPU computes in it" if torch.cuda.is_bf16_supported()
                else "fp16: the GPU has no bf16")
    if cpu_computes_bf16():
        return "bf16: the CPU has AMX bf16 tiles"
    if "avx512_bf16" in _cpu_flags():
        return ("fp32: the CPU has AVX512-BF16 but no AMX; bf16 trained slower than fp32 "
                "on such CPUs and lost accumulation exactness")
    return "fp32: the CPU has no bf16 units; bf16 would be emulated, many times slower"


def dtype_name(dtype: torch.dtype) -> str:
    return {v: k for k, v in _NAMES.items()}.get(dtype, str(dtype).removeprefix("torch."))
