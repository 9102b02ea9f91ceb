"""Merged tensors to safetensors shards of bounded size, named and indexed as transformers
writes them."""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from safetensors.torch import save_file


class ShardWriter:
    """Tensors to safetensors files of at most ``limit`` bytes each (one tensor larger
    than the limit gets a file of its own), named and indexed as transformers writes them."""

    def __init__(self, out_dir: Path, limit: int) -> None:
        self.out_dir, self.limit = out_dir, limit
        self.current: dict[str, torch.Tensor] = {}
        self.size = 0
        self.written: list[tuple[str, list[str], int]] = []  # (temp name, keys, bytes)

    def add(self, key: str, tensor: torch.Tensor) -> None:
        nbytes = tensor.numel() * tensor.element_size()
        if self.current and self.size + nbytes > self.limit:
            self._flush()
        self.current[key] = tensor.contiguous()
        self.size += nbytes

    def _flush(self) -> None:
        name = f".shard-{len(self.written):05d}.safetensors"
        save_file(self.current, str(self.out_dir / name), metadata={"format": "pt"})
        self.written.append((name, list(self.current), self.size))
        self.current, self.size = {}, 0

    def close(self) -> int:
        if self.current or not self.written:
            self._flush()
        if len(self.written) == 1:
            os.replace(self.out_dir / self.written[0][0], self.out_dir / "model.safetensors")
            return 1
        total = len(self.written)
        weight_map: dict[str, str] = {}
        for number, (temp, keys, _) in enumerate(self.written, start=1):
            final = f"model-{number:05d}-of-{total:05d}.safetensors"
            os.replace(self.out_dir / temp, self.out_dir / final)
            weight_map.update(dict.fromkeys(keys, final))
        index = {"metadata": {"total_size": sum(size for *_, size in self.written)},
                 "weight_map": weight_map}
        (self.out_dir / "model.safetensors.index.json").write_text(json.dumps(index, indent=2))
        return total
