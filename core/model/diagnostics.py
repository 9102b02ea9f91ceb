"""What a trained adapter learned, per target module: how large each update is and how
many directions it uses.

Each LoRA update is ``ΔW = scale · B A`` with rank at most ``r``. Its singular values say
whether the rank was right: when 90% of the update's energy (sum of squared singular
values) lies in a few of the ``r`` directions, the rank is oversized and a smaller one
trains the same for less memory; when every direction carries energy, the rank may be
what limits learning. The singular values come from the small ``r × r`` core of the
product (QR of ``B`` and ``Aᵀ``), never from the full ``out × in`` matrix.
"""

from __future__ import annotations

import json
import math
from collections import defaultdict
from pathlib import Path
from statistics import median
from typing import Any

import torch
from safetensors import safe_open

ENERGY = 0.9  # the share of an update's energy its "directions used" must hold


def update_singular_values(a: torch.Tensor, b: torch.Tensor, scale: float) -> torch.Tensor:
    """Singular values of ``scale · b @ a`` (``a``: r × in, ``b``: out × r), descending."""
    _, r_b = torch.linalg.qr(b.double())
    _, r_a = torch.linalg.qr(a.double().T)
    return torch.linalg.svdvals(scale * r_b @ r_a.T)


def _directions(values: torch.Tensor) -> int:
    """How many leading singular directions hold ``ENERGY`` of the update's energy."""
    energy = values.square()
    total = float(energy.sum())
    if total == 0.0:
        return 0
    cumulative = torch.cumsum(energy, 0) / total
    return int((cumulative < ENERGY - 1e-12).sum()) + 1


def adapter_diagnostics(adapter_dir: Path) -> dict[str, Any]:
    """Per target module (over layers): update norm and directions used; notes on the rank."""
    config = json.loads((adapter_dir / "adapter_config.json").read_text(encoding="utf-8"))
    rank, alpha = int(config["r"]), float(config["lora_alpha"])
    scale = alpha / (math.sqrt(rank) if config.get("use_rslora") else rank)
    pairs: dict[str, dict[str, torch.Tensor]] = defaultdict(dict)
    with safe_open(adapter_dir / "adapter_model.safetensors", framework="pt") as handle:
        for key in handle.keys():  # noqa: SIM118 - safe_open is not a mapping
            for part in ("lora_A", "lora_B"):
                marker = f".{part}."
                if marker in key:
                    pairs[key.split(marker)[0]][part] = handle.get_tensor(key)
    by_module: dict[str, list[tuple[float, int]]] = defaultdict(list)
    for name, pair in sorted(pairs.items()):
        values = update_singular_values(pair["lora_A"], pair["lora_B"], scale)
        by_module[name.rsplit(".", 1)[-1]].append((float(values.norm()), _directions(values)))
    modules = {
        module: {
            "layers": len(stats),
            "update_norm_mean": sum(norm for norm, _ in stats) / len(stats),
            "directions_used_median": median(used for _, used in stats),
            "directions_used_max": max(used for _, used in stats),
        }
        for module, stats in sorted(by_module.items())
    }
    return {"rank": rank, "energy_share": ENERGY, "modules": modules,
            "notes": _notes(rank, modules)}


def _notes(rank: int, modules: dict[str, dict[str, Any]]) -> list[str]:
    if not modules:
        return []
    if all(stats["update_norm_mean"] == 0.0 for stats in modules.values()):
        return ["the adapter is still zero: training did not change the model"]
    widest = max(stats["directions_used_max"] for stats in modules.values())
    typical = median(stats["directions_used_median"] for stats in modules.values())
    share = f"{ENERGY:.0%} of each update's energy"
    if widest <= rank / 4:
        smaller = min(rank // 2, max(4, 2 ** math.ceil(math.log2(max(widest, 1) * 2))))
        return [f"rank looks oversized: {share} lies in at most {widest} of r={rank} "
                f"directions; r={smaller} would likely train the same for less memory"]
    if typical >= 0.9 * rank:
        return [f"rank looks saturated: {share} needs {typical:g} of r={rank} directions "
                "(median over modules); a larger r may learn more"]
    return []
