"""Config dtype names → torch dtypes, and the device a run uses."""

from __future__ import annotations

import torch

_NAMES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}


def default_device() -> str:
    """The device a run trains on: the first CUDA GPU if there is one, else the CPU."""
    return "cuda" if torch.cuda.is_available() else "cpu"


def resolve_dtype(name: str, *, device: str = "cpu") -> torch.dtype:
    """``auto`` is bf16 where the hardware has it, else fp16 on a GPU and fp32 on the CPU.

    On the CPU bf16 matmuls are emulated on most machines and fp16 loses precision, so
    ``auto`` keeps fp32 there; an explicit ``bf16``/``fp16`` is honoured anywhere.
    """
    if name != "auto":
        try:
            return _NAMES[name]
        except KeyError:
            raise ValueError(f"unknown dtype '{name}'; use auto, bf16, fp16 or fp32") from None
    if device.startswith("cuda"):
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.float32


def dtype_name(dtype: torch.dtype) -> str:
    return {v: k for k, v in _NAMES.items()}.get(dtype, str(dtype).removeprefix("torch."))
