"""Weights lorapipe reads are safetensors whose header is checked before any tensor is mapped.

An ``adapter/``, a checkpoint or ``merged/`` may come from elsewhere (a download, a copy
from another machine) with a manifest that matches it, so a manifest proves nothing about
what the file is. Two things are refused here, by name, with one line saying what to do:

- a pickle (``adapter_model.bin``, ``pytorch_model.bin``) where safetensors is expected:
  peft and transformers would ``torch.load`` it, and unpickling runs whatever it names;
- a safetensors file whose header lies about the body (offsets past the end, overlapping
  or leaving gaps, a shape that does not match its bytes, a header longer than the file).

The header is parsed here rather than left to the ``safetensors`` library: its errors
("MetadataIncompleteBuffer", "HeaderTooLarge") name neither the file nor a remedy and
surface as tracebacks from deep inside peft or transformers, and each caller would have
to catch them around every load. Checking first gives one message for every reader.
"""

from __future__ import annotations

import json
import math
import struct
from pathlib import Path
from typing import Any

from lorapipe.errors import UserError

ADAPTER_WEIGHTS = "adapter_model.safetensors"
# what peft and transformers fall back to when the safetensors file is absent
_PICKLED = ("adapter_model.bin", "pytorch_model.bin", "pytorch_model.bin.index.json")
# the safetensors library refuses longer headers (MAX_HEADER_SIZE)
_MAX_HEADER = 100_000_000
_DTYPE_BYTES = {
    "BOOL": 1, "U8": 1, "I8": 1, "F8_E5M2": 1, "F8_E4M3": 1, "F8_E5M2FNUZ": 1,
    "F8_E4M3FNUZ": 1, "F8_E8M0": 1, "I16": 2, "U16": 2, "F16": 2, "BF16": 2,
    "I32": 4, "U32": 4, "F32": 4, "I64": 8, "U64": 8, "F64": 8, "C64": 8,
}


def header_problem(path: Path) -> str | None:
    """None if ``path`` is a well-formed safetensors file, else what is wrong with it.

    Reads only the header: its length (8 bytes, little-endian), then the JSON, checked
    against the file's size as the format requires - every tensor's bytes inside the
    body, none overlapping, together covering it exactly.
    """
    size = path.stat().st_size
    with path.open("rb") as handle:
        head = handle.read(8)
        if len(head) < 8:
            return f"{size} bytes, shorter than a safetensors header"
        (length,) = struct.unpack("<Q", head)
        if length > _MAX_HEADER or 8 + length > size:
            # what torch.save writes: a zip archive, or a raw pickle (protocol 2 and up)
            if head[:2] == b"PK" or head[:1] == b"\x80":
                return "it is a pickle (torch.save) file"
            return (f"its header claims {length:,} bytes, but the file has {size:,} "
                    "(truncated, or not a safetensors file)")
        raw = handle.read(length)
    try:
        header = json.loads(raw.decode("utf-8"), object_pairs_hook=_no_duplicates)
    except (UnicodeDecodeError, ValueError, RecursionError) as err:
        return f"its header is not valid JSON ({err})"
    if not isinstance(header, dict):
        return "its header is not a JSON object"
    body = size - 8 - length
    spans = []
    for name, entry in header.items():
        if name == "__metadata__":
            continue
        found = _tensor_problem(entry)
        if found is not None:
            return f"tensor {name!r}: {found}"
        begin, end = entry["data_offsets"]
        if end > body:
            return f"tensor {name!r} ends at byte {end:,} of a {body:,}-byte body (truncated?)"
        spans.append((begin, end, name))
    position = 0
    for begin, end, name in sorted(spans):
        if begin != position:
            where = "overlaps the tensor before it" if begin < position else "leaves a gap"
            return f"tensor {name!r} at bytes {begin:,}-{end:,} {where}"
        position = end
    if position != body:
        return f"its tensors cover {position:,} of the {body:,} bytes after the header"
    return None


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    keys = [key for key, _ in pairs]
    if len(set(keys)) != len(keys):
        raise ValueError("a name appears twice")
    return dict(pairs)


def _tensor_problem(entry: Any) -> str | None:
    if not isinstance(entry, dict) or not {"dtype", "shape", "data_offsets"} <= set(entry):
        return "not a {dtype, shape, data_offsets} entry"
    dtype, shape, offsets = entry["dtype"], entry["shape"], entry["data_offsets"]
    if dtype not in _DTYPE_BYTES:
        return f"unknown dtype {dtype!r}"
    if not (isinstance(shape, list) and all(_natural(n) for n in shape)):
        return f"shape {shape!r} is not a list of non-negative integers"
    if not (isinstance(offsets, list) and len(offsets) == 2 and all(map(_natural, offsets))
            and offsets[0] <= offsets[1]):
        return f"data_offsets {offsets!r} are not a [begin, end] pair with 0 <= begin <= end"
    if math.prod(shape) * _DTYPE_BYTES[dtype] != offsets[1] - offsets[0]:
        return f"shape {shape} of {dtype} does not fill bytes {offsets[0]:,}-{offsets[1]:,}"
    return None


def _natural(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def weights_file_problem(path: Path, what: str) -> str | None:
    """None if ``path`` is a well-formed safetensors file, else a line naming it and saying
    it is not ``what`` (e.g. "a safetensors adapter")."""
    found = header_problem(path)
    if found is None:
        return None
    return f"{path}: this file is not {what} ({found}); lorapipe reads only safetensors"


def adapter_problem(adapter_dir: Path) -> str | None:
    """None if ``adapter_dir`` holds ``adapter_model.safetensors`` with a sound header;
    else what is wrong, naming the file (a pickled ``adapter_model.bin`` in its place,
    which peft would ``torch.load``, by its own name)."""
    weights = adapter_dir / ADAPTER_WEIGHTS
    if not weights.is_file():
        return _pickle_problem(adapter_dir) or f"{weights} is missing"
    return weights_file_problem(weights, "a safetensors adapter")


def model_problem(model_dir: Path) -> str | None:
    """None if every weight file of the model in ``model_dir`` is safetensors with a sound
    header; else what is wrong (a pickled ``pytorch_model.bin`` in their place by name)."""
    files = sorted(model_dir.glob("*.safetensors"))
    if not files:
        return _pickle_problem(model_dir) or f"{model_dir}: no *.safetensors weights"
    return next((found for path in files
                 if (found := weights_file_problem(path, "a safetensors model file"))), None)


def _pickle_problem(directory: Path) -> str | None:
    for name in _PICKLED:
        if (directory / name).exists():
            return (f"{directory / name}: a pickle file is never loaded (unpickling can run "
                    "code); lorapipe reads only safetensors")
    return None


def require_safe_adapter(adapter_dir: Path, remedy: str) -> None:
    """A user error naming the file and ``remedy`` unless ``adapter_problem`` finds none."""
    found = adapter_problem(adapter_dir)
    if found is not None:
        raise UserError(f"{found}; {remedy}")


def require_safe_model(model_dir: Path, remedy: str) -> None:
    """A user error naming the file and ``remedy`` unless ``model_problem`` finds none."""
    found = model_problem(model_dir)
    if found is not None:
        raise UserError(f"{found}; {remedy}")
