"""The processes a run trains on: one, data-parallel (DDP) or sharded (FSDP2), as
``torchrun`` or ``accelerate launch`` set them up; and the trainable state gathered from,
or handed back to, a sharded model.

Under FSDP2 every parameter is a ``DTensor`` holding this process's shard, so the
adapter, its optimizer state and the finite-weights check each need a collective that
all processes join. The checkpoint on disk stays world-size independent: full tensors
keyed by name, written by the main process.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

import torch

from lorapipe.errors import UserError

if TYPE_CHECKING:
    from accelerate import Accelerator


def _mixed_precision(model: torch.nn.Module) -> str:
    """Autocast to the base model's half dtype (the adapters stay fp32): bf16 on any
    device, fp16 on GPUs only (the CPU has no fp16 autocast worth having)."""
    dtypes = {p.dtype for p in model.parameters()}
    if torch.bfloat16 in dtypes:
        return "bf16"
    return "fp16" if torch.float16 in dtypes and torch.cuda.is_available() else "no"


def fsdp_launched() -> bool:
    """Whether ``accelerate launch`` was given an FSDP config for several processes."""
    return (int(os.environ.get("WORLD_SIZE", "1")) > 1
            and os.environ.get("ACCELERATE_USE_FSDP", "false").lower() == "true")


def make_accelerator(model: torch.nn.Module) -> Accelerator:
    """The accelerator for this process, from the launcher's environment.

    accelerate 1.15 turns an FSDP config (``ACCELERATE_USE_FSDP``) into FSDP only on
    accelerator devices and silently falls back to DDP on the CPU, where each process
    would then hold the whole model. torch's FSDP2 itself runs on the CPU over gloo, so
    there the plugin is put in place after the fact and accelerate's own FSDP2 path
    (``fsdp2_prepare_model``, clipping, ``no_sync``) runs as it does on GPUs.
    """
    from accelerate import Accelerator
    from accelerate.utils import DistributedType, FullyShardedDataParallelPlugin

    multi = int(os.environ.get("WORLD_SIZE", "1")) > 1
    cpu = not torch.cuda.is_available() and multi  # accelerate goes multi-process if told
    fsdp = fsdp_launched()
    if fsdp and os.environ.get("FSDP_VERSION", "1") != "2":
        raise UserError("FSDP: lorapipe trains with FSDP2; set fsdp_version: 2 in the "
                        "accelerate config's fsdp_config")
    acc = Accelerator(mixed_precision=_mixed_precision(model), cpu=cpu)
    if fsdp and acc.distributed_type == DistributedType.MULTI_CPU:
        acc.state.distributed_type = DistributedType.FSDP
        acc.state.fsdp_plugin = FullyShardedDataParallelPlugin()
    return acc


def sum_over(accelerator: Accelerator, *values: float) -> list[float]:
    """Sum numbers over all processes (one all-reduce for all of them), so every process
    decides alike: the same loss, the same early stop, the same stop on a signal."""
    if accelerator.num_processes == 1:
        return [float(v) for v in values]
    tensor = torch.tensor(values, dtype=torch.float64, device=accelerator.device)
    return accelerator.reduce(tensor, reduction="sum").tolist()


def _is_sharded(tensor: torch.Tensor) -> bool:
    from torch.distributed.tensor import DTensor

    return isinstance(tensor, DTensor)


def trainable_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Every trainable parameter as a full CPU tensor, by its name in ``model.state_dict()``.

    Collective when ``model`` is sharded: every process must call it.
    """
    return {name: _full(param).detach().cpu()
            for name, param in model.named_parameters() if param.requires_grad}


def placement(model: torch.nn.Module, kind: str, world: int) -> dict[str, Any]:
    """How the model's weights are spread over the processes (collective when sharded),
    for metrics.jsonl: under FSDP2 each process holds about 1/world of the bytes."""
    from accelerate.utils import gather_object

    params = list(model.parameters())
    local = sum((p.to_local() if _is_sharded(p) else p).nbytes for p in params)
    return {"processes": world, "kind": kind,
            "weight_bytes": sum(p.numel() * p.element_size() for p in params),
            "weight_bytes_per_process": gather_object([local]),
            "weight_dtypes": sorted({str(p.dtype).removeprefix("torch.") for p in params})}


def optimizer_state(optimizer: torch.optim.Optimizer) -> dict[str, Any]:
    """The optimizer's ``state_dict`` with sharded state gathered in full (collective).

    Not torch's ``get_optimizer_state_dict``: on an optimizer that has not stepped yet it
    runs a step with zero gradients to create the state, which advances Adam's step count
    and so changes every later update's bias correction (measured: the first real update
    at 0.74× its size), and a run checkpoints before its first step. This form is also
    the one a single process saves, so a checkpoint loads in any number of processes.
    """
    saved = optimizer.state_dict()
    state = {index: {key: _full(value) for key, value in entry.items()}
             for index, entry in saved["state"].items()}
    return {**saved, "state": state}


def load_optimizer_state(optimizer: torch.optim.Optimizer, saved: dict[str, Any]) -> None:
    """Load ``optimizer_state``'s form, giving each sharded parameter's state its slice."""
    from torch.distributed.tensor import distribute_tensor

    params = [param for group in optimizer.param_groups for param in group["params"]]
    for index, entry in saved["state"].items():
        param = params[index]
        if not _is_sharded(param):
            continue
        for key, value in entry.items():
            if value.shape == param.shape:  # exp_avg and the like; not the step count
                entry[key] = distribute_tensor(value.to(param.device), param.device_mesh,
                                               param.placements, src_data_rank=None)
    optimizer.load_state_dict(saved)


def _full(value: Any) -> Any:
    return value.full_tensor() if _is_sharded(value) else value
