"""The fingerprint that lets a second ``prepare`` reuse the first one's output.

It covers what the output depends on: the data (each loader's content hash), the data
section of the config, the model reference, the split seed, the exact tokenizer files
and this stage's output format. Anything a loader cannot hash disables reuse.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from lorapipe import __version__
from lorapipe.components import Loader
from lorapipe.plan import RunPlan

# Bump when the stage writes different output for the same inputs.
OUTPUT_VERSION = 2  # 2: kind, tools and origin columns; text and completion records


def hash_directory(directory: Path) -> str:
    digest = hashlib.sha256()
    for path in sorted(p for p in directory.rglob("*") if p.is_file()):
        digest.update(str(path.relative_to(directory)).encode() + b"\0")
        digest.update(path.read_bytes())
    return digest.hexdigest()


def fingerprint(plan: RunPlan, loaders: list[Loader], tokenizer_dir: Path) -> str | None:
    config = plan.config
    data_hashes = [loader.fingerprint() for loader in loaders]
    if any(h is None for h in data_hashes):
        return None
    relevant: dict[str, Any] = {
        "output_version": OUTPUT_VERSION,
        "lorapipe": __version__,
        "data": plan.resolved_dict()["data"],
        "model": {"name_or_path": config.model.name_or_path,
                  "trust_remote_code": config.model.trust_remote_code},
        "seed": config.train.seed,
        "data_hashes": data_hashes,
        "tokenizer": hash_directory(tokenizer_dir),
    }
    return hashlib.sha256(json.dumps(relevant, sort_keys=True).encode()).hexdigest()
