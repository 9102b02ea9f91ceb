"""How much memory there is and how much the run takes: the device's capacity, the
memory this process may still use, snapshots of use, and their record in metrics.jsonl."""

from __future__ import annotations

import json
import os
import resource
import sys
from pathlib import Path
from typing import Any

import torch


def device_capacity(device: str) -> dict[str, int]:
    """Total and currently free memory of ``device`` (system RAM for the CPU)."""
    if device.startswith("cuda"):
        free, total = torch.cuda.mem_get_info(torch.device(device))
        return {"total_bytes": total, "available_bytes": free}
    try:
        import psutil  # optional: used when installed, /proc or sysconf otherwise

        memory = psutil.virtual_memory()
        return {"total_bytes": memory.total, "available_bytes": memory.available}
    except ImportError:
        pass
    info = _proc_kib("/proc/meminfo", ("MemTotal", "MemAvailable"))
    if info:
        return {"total_bytes": info["MemTotal"], "available_bytes": info["MemAvailable"]}
    total = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    return {"total_bytes": total, "available_bytes": total}


def memory_left() -> int:
    """Bytes this process may still use on the CPU: the machine's available memory, or
    less when a limit on the process's data segment (``ulimit -d``) says so."""
    available = device_capacity("cpu")["available_bytes"]
    soft, _ = resource.getrlimit(resource.RLIMIT_DATA)
    used = _proc_kib("/proc/self/status", ("VmData",))
    if soft != resource.RLIM_INFINITY and used:
        available = min(available, soft - used["VmData"])
    return available


def memory_snapshot() -> dict[str, Any]:
    """Memory in use now: process RSS and its peak, plus CUDA allocated/reserved/peak on GPU.

    The training loop records one at each stage transition (baseline, model loaded,
    adapters injected, training peak, evaluation) in metrics.jsonl.
    """
    snapshot: dict[str, Any] = _rss()
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        snapshot.update(
            cuda_allocated_bytes=torch.cuda.memory_allocated(),
            cuda_reserved_bytes=torch.cuda.memory_reserved(),
            cuda_peak_allocated_bytes=torch.cuda.max_memory_allocated(),
            cuda_peak_reserved_bytes=torch.cuda.max_memory_reserved(),
        )
    return snapshot


def record_memory(metrics_path: Path, stage: str, snapshot: dict[str, Any] | None = None) -> None:
    """Append a stage transition's memory to metrics.jsonl (taken now unless given)."""
    record = {"event": "memory", "stage": stage, **(snapshot or memory_snapshot())}
    with metrics_path.open("a", encoding="utf-8") as handle:
        handle.write(json.dumps(record) + "\n")


def _rss() -> dict[str, int]:
    info = _proc_kib("/proc/self/status", ("VmRSS", "VmHWM"))
    if info:
        return {"rss_bytes": info["VmRSS"], "peak_rss_bytes": info["VmHWM"]}
    try:
        import psutil

        rss = psutil.Process().memory_info().rss
    except ImportError:
        rss = None
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    peak *= 1 if sys.platform == "darwin" else 1024  # bytes on macOS, KiB elsewhere
    return {"rss_bytes": rss if rss is not None else peak, "peak_rss_bytes": peak}


def _proc_kib(path: str, keys: tuple[str, ...]) -> dict[str, int]:
    """``key: N kB`` lines of a /proc file, in bytes; empty where there is no /proc."""
    try:
        with open(path, encoding="ascii") as handle:
            lines = handle.read().splitlines()
    except OSError:
        return {}
    found = {}
    for line in lines:
        key, _, value = line.partition(":")
        if key in keys:
            found[key] = int(value.split()[0]) * 1024
    return found if len(found) == len(keys) else {}
