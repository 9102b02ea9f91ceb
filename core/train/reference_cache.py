"""``precompute_reference``: a preference objective's reference log-probabilities, computed
once per training example instead of a reference forward at every step.

The reference is the base model (the adapters off), so its values depend only on the base
weights and the prepared data: they are computed at the start of training, stored in
``reference/`` of the run under a key of both (the model section of the config, the
sizes and times of the model's weight files, the prepared data's fingerprint) and read
back by a resumed run; another base or other data gets another key.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from tqdm.auto import tqdm

from lorapipe.atomic import atomic_write_bytes
from lorapipe.train.preference import adapters_off

if TYPE_CHECKING:
    from lorapipe.artifacts import RunPaths
    from lorapipe.objective import Objective
    from lorapipe.train.accumulation import Accumulation


def reference_values(model: torch.nn.Module, objective: Objective, batches: Accumulation,
                     paths: RunPaths, run_config: dict[str, Any] | None,
                     device: torch.device, main: bool) -> torch.Tensor:
    """(examples, rows per example) of ``objective.reference``, from the cache when it
    holds them for this base and data; ``main`` writes the cache."""
    from safetensors.torch import load, save

    path = _path(objective, paths, run_config)
    if path is not None and path.is_file():
        values = load(path.read_bytes())["reference"]
        if values.shape[0] == len(batches.examples):
            return values
    values = _compute(model, objective, batches, device)
    if path is not None and main:
        atomic_write_bytes(path, save({"reference": values}))
    return values


def _compute(model: torch.nn.Module, objective: Objective, batches: Accumulation,
             device: torch.device) -> torch.Tensor:
    examples, size = batches.examples, batches.micro_batch_size
    rows = []
    was_training = model.training
    model.eval()
    with adapters_off(model):
        for start in tqdm(range(0, len(examples), size), desc="reference", unit="batch"):
            chunk = examples[start:start + size]
            batch = batches.collate([[example] for example in chunk], batches.pad)
            values = objective.reference(model, {k: v.to(device) for k, v in batch.items()})
            rows.append(values.detach().float().cpu().reshape(-1, len(chunk)).T)
    model.train(was_training)
    return torch.cat(rows).contiguous()


def _path(objective: Objective, paths: RunPaths, run_config: dict[str, Any] | None
          ) -> Path | None:
    """Where this base and data's values live; ``None`` when the run cannot say which
    base and data they are (no resolved config, no prepared-data fingerprint)."""
    if run_config is None or not paths.data_report.is_file():
        return None
    data = json.loads(paths.data_report.read_text()).get("fingerprint")
    if data is None:
        return None
    model = run_config.get("model") or {}
    weights = []
    source = Path(str(model.get("name_or_path", ""))).expanduser()
    if source.is_dir():
        weights = sorted((f.name, f.stat().st_size, f.stat().st_mtime_ns)
                         for f in source.iterdir() if f.suffix in (".safetensors", ".bin"))
    key = hashlib.sha256(json.dumps([model, weights, data, objective.name],
                                    sort_keys=True, default=str).encode()).hexdigest()[:16]
    return paths.reference / f"{objective.name}-{key}.safetensors"
