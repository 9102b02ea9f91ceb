"""Folding a LoRA adapter into the base checkpoint one tensor at a time.

peft's ``merge_and_unload`` needs the whole model in memory, so a model larger than the
machine's memory could be trained (4-bit) but not merged. Here each base tensor is read
from its safetensors shard, updated (``W + s·B·A``; DoRA's ``m / ‖W + s·B·A‖`` row
scaling; per expert for fused 3-D expert stacks; replaced biases and ``modules_to_save``),
checked, and written to an output shard
of bounded size, so memory holds one shard being written and the adapter, never the
model. The arithmetic is done in float32 and rounded once to the output dtype.

Each updated tensor is checked on random probe vectors against what the adapter computes
at that layer (``W x + s B A x``, or DoRA's form), so a merge that went wrong in one
tensor is caught whatever the model's size.
"""

from __future__ import annotations

import json
import math
import re
import shutil
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import load_file
from tqdm import tqdm

from lorapipe.atomic import atomic_write_json
from lorapipe.errors import UserError
from lorapipe.merge.shards import ShardWriter
from lorapipe.merge.stacked import Stacked, StackedDeltas, stacked_parameters

_PREFIX = "base_model.model."
# Files of the base's model directory that merged/ keeps (the tokenizer is written apart).
_MODEL_FILES = ("generation_config.json",)
_PROBES = 4
# Relative error of a probe allowed between the merged tensor and the adapter's own form,
# both in float32: only a wrong update (scale, transpose, missing term) comes near it.
_PROBE_TOLERANCE = 1e-4


@dataclass
class _Update:
    """What the adapter does to one weight of the base."""

    scale: float
    alpha: float = 0.0
    a: torch.Tensor | None = None  # (r, in)
    b: torch.Tensor | None = None  # (out, r)
    embedding: bool = False  # lora_embedding_A (r, vocab), lora_embedding_B (dim, r)
    # a fused expert stack (peft's ParamWrapper): A (experts·r, in), B (out, r·experts)
    experts: int = 1
    magnitude: torch.Tensor | None = None  # DoRA, one per output row
    replaced: dict[str, torch.Tensor] = field(default_factory=dict)  # "weight"/"bias" → new

    def delta_rows(self) -> torch.Tensor:
        """``s·B·A`` with one row per output (per token for an embedding), float32."""
        delta = (self.b.float() @ self.a.float()) * self.scale
        return delta.T if self.embedding else delta


def lora_init(config: Any) -> str | None:
    """The initialisation of a peft ``LoraConfig`` when it moved part of the base weight
    into the adapter (PiSSA, OLoRA, ...); None for the ones that leave the base alone."""
    init = config.init_lora_weights
    return init if isinstance(init, str) and init != "gaussian" else None


@dataclass
class LoraAdapter:
    """A saved peft LoRA adapter, grouped by the base module each tensor updates.

    ``init`` is set when the adapter's initialisation moved part of the base weight into
    it (PiSSA, OLoRA): it was trained against that residual, which the merge recomputes.
    """

    updates: dict[str, _Update]
    config: Any  # peft's LoraConfig

    @property
    def init(self) -> str | None:
        return lora_init(self.config)

    @classmethod
    def load(cls, adapter_dir: Path) -> LoraAdapter:
        from peft import LoraConfig

        from lorapipe.safetensors_check import require_safe_adapter

        require_safe_adapter(adapter_dir, "run `lorapipe train CONFIG` again")
        config = LoraConfig.from_pretrained(str(adapter_dir))
        tensors = load_file(str(adapter_dir / "adapter_model.safetensors"))
        updates: dict[str, _Update] = {}
        for key, tensor in tensors.items():
            module, part = _split(key)
            update = updates.setdefault(module, _Update(scale=0.0))
            if part in ("lora_A.weight", "lora_embedding_A"):
                update.a, update.embedding = tensor, part == "lora_embedding_A"
            elif part in ("lora_B.weight", "lora_embedding_B"):
                update.b = tensor
            elif part == "lora_magnitude_vector":
                update.magnitude = tensor
            elif part in ("weight", "bias", "base_layer.weight", "base_layer.bias"):
                update.replaced[part.rsplit(".", 1)[-1]] = tensor
            else:
                raise UserError(f"{adapter_dir}: the adapter holds {key}, which the merge does "
                                "not know how to fold in (a LoRA, DoRA, bias or "
                                "modules_to_save tensor was expected)")
        for module, update in updates.items():
            if update.a is not None:
                update.alpha = _pattern(config, config.alpha_pattern, module, config.lora_alpha)
                rank = _pattern(config, config.rank_pattern, module, config.r)
                update.experts = update.a.shape[0] // rank  # 1 but for an expert stack
                update.scale = update.alpha / (math.sqrt(rank) if config.use_rslora else rank)
        adapter = cls(updates, config)
        if adapter.init and not adapter.init.startswith(("pissa", "olora")):
            raise UserError(f"{adapter_dir}: adapters initialised with {adapter.init!r} change "
                            "the base weights in a way the merge cannot recompute; only PiSSA "
                            "and OLoRA can be merged")
        return adapter


def _split(key: str) -> tuple[str, str]:
    """``base_model.model.X.lora_A.weight`` → (``X``, ``lora_A.weight``)."""
    name = key.removeprefix(_PREFIX)
    match = re.match(r"(.+?)\.(lora_[AB]\.weight|lora_embedding_[AB]|lora_magnitude_vector"
                     r"|base_layer\.(?:weight|bias))$", name)
    if match:
        return match.group(1), match.group(2)
    module, _, part = name.rpartition(".")
    return module, part


def _pattern(config: Any, pattern: dict[str, Any], module: str, default: Any) -> Any:
    """``default`` (``lora_alpha``, ``r``), or its per-module value from peft's
    ``alpha_pattern``/``rank_pattern``."""
    from peft.utils.other import get_pattern_key

    if not pattern:
        return default
    return pattern.get(get_pattern_key(pattern.keys(), module), default)


def _residual(rows: torch.Tensor, update: _Update, adapter: LoraAdapter) -> torch.Tensor:
    """The base weight PiSSA/OLoRA trained against: ``W`` less the principal part that
    initialisation moved into the adapter. peft's own layer computes it, as
    ``PeftModel.from_pretrained`` does when it loads such an adapter."""
    from peft.tuners.lora import Linear as LoraLinear

    if update.embedding:
        raise UserError(f"{adapter.init} initialisation on an embedding cannot be merged")
    layer = torch.nn.Linear(rows.shape[1], rows.shape[0], bias=False)
    layer.weight.data = rows.clone()
    config = replace(adapter.config, fan_in_fan_out=False)  # rows are (out, in) here
    LoraLinear(layer, "default", config, r=update.a.shape[0], lora_alpha=update.alpha,
               init_lora_weights=adapter.init, use_rslora=config.use_rslora)
    return layer.weight.data


_FLOAT_DTYPES = {"F32": torch.float32, "BF16": torch.bfloat16, "F16": torch.float16}


@dataclass
class Layout:
    """The base checkpoint as stored: its safetensors shards."""

    directory: Path
    shards: list[str]

    @classmethod
    def of(cls, model_dir: Path) -> Layout:
        index = model_dir / "model.safetensors.index.json"
        if index.is_file():
            weight_map = json.loads(index.read_text(encoding="utf-8"))["weight_map"]
            return cls(model_dir, sorted(set(weight_map.values())))
        if (model_dir / "model.safetensors").is_file():
            return cls(model_dir, ["model.safetensors"])
        raise UserError(f"model.name_or_path: {model_dir} has no safetensors weights "
                        "(model.safetensors or an index of shards); merging reads only "
                        "safetensors. Convert the checkpoint with transformers' "
                        "save_pretrained(safe_serialization=True)")

    def tensors(self) -> Iterator[tuple[str, torch.Tensor]]:
        for shard in self.shards:
            yield from _shard_tensors(self.directory / shard)

    def numel(self) -> int:
        """How many numbers the checkpoint holds (from the headers, nothing loaded)."""
        return sum(_shard_numel(self.directory / shard) for shard in self.shards)

    def stored_dtype(self) -> torch.dtype:
        """The floating dtype most of the checkpoint's numbers are stored in (from the
        headers): what ``merged/`` is written in unless ``merge.dtype`` says otherwise."""
        counts: dict[str, int] = {}
        for shard in self.shards:
            with safe_open(str(self.directory / shard), framework="pt") as handle:
                for key in handle.keys():  # noqa: SIM118 (safe_open is not a dict)
                    part = handle.get_slice(key)
                    kind = part.get_dtype()
                    counts[kind] = counts.get(kind, 0) + math.prod(part.get_shape())
        floats = {k: n for k, n in counts.items() if k in _FLOAT_DTYPES}
        return _FLOAT_DTYPES[max(floats, key=floats.__getitem__)] if floats else torch.float32


# Each shard is opened in its own function: its mapping is released only when the handle
# is freed (not when the ``with`` ends), and must be gone before the next is mapped.
def _shard_tensors(path: Path) -> Iterator[tuple[str, torch.Tensor]]:
    with safe_open(str(path), framework="pt") as handle:
        for key in handle.keys():  # noqa: SIM118 (safe_open is not a dict)
            yield key, handle.get_tensor(key)


def _shard_numel(path: Path) -> int:
    with safe_open(str(path), framework="pt") as handle:
        return sum(math.prod(handle.get_slice(key).get_shape())
                   for key in handle.keys())  # noqa: SIM118


@dataclass
class Architecture:
    """What the checkpoint's tensors do not say: which modules store their weight (in, out)
    (GPT-2's ``Conv1D``), when the base ties them the input and output embeddings, and
    where peft put the LoRA of each adapted expert stack."""

    transposed: set[str]
    tied: tuple[str, str] | None
    stacked: dict[str, Stacked] = field(default_factory=dict)  # parameter → its LoRA
    model: torch.nn.Module | None = None  # weightless; knows the checkpoint conversions
    # a checkpoint key's name in the model (lorapipe.model.loading.loaded_names)
    loaded_name: Callable[[str], str] = str

    @classmethod
    def of(cls, model: torch.nn.Module, lora: Any = None) -> Architecture:
        """From the model built without weights (``lorapipe.model.loading.weightless_model``;
        consumed when ``lora``, the adapter's peft ``LoraConfig``, targets parameters)."""
        from transformers.pytorch_utils import Conv1D

        from lorapipe.model.loading import loaded_names

        loaded_name = loaded_names(model)  # before peft wraps the model (below)
        names = {id(module): name for name, module in model.named_modules()}
        inputs, outputs = model.get_input_embeddings(), model.get_output_embeddings()
        tied = (outputs is not None and getattr(model.config, "tie_word_embeddings", False)
                and names.get(id(inputs)) is not None)
        targets_parameters = lora is not None and lora.target_parameters
        return cls(
            transposed={name for name, module in model.named_modules()
                        if isinstance(module, Conv1D)},
            tied=(names[id(inputs)], names[id(outputs)]) if tied else None,
            stacked=stacked_parameters(model, lora) if targets_parameters else {},
            model=model,
            loaded_name=loaded_name,
        )

    def checkpoint_parts(self, tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Tensors keyed by the model's parameters, as the checkpoint stores them:
        transformers' own reverse of its load-time conversion (what ``save_pretrained``
        writes). Its operations only move numbers, so a delta converts like a weight."""
        from transformers.core_model_loading import revert_weight_conversion

        return revert_weight_conversion(self.model, tensors)


def merge_checkpoint(base_dir: Path, adapter_dir: Path, out_dir: Path, *, dtype: torch.dtype,
                     shard_bytes: int, architecture: Architecture) -> dict[str, Any]:
    """Write ``base_dir``'s weights with ``adapter_dir`` folded in to ``out_dir``, and
    the config that loads them.

    When the base ties its embeddings and the adapter changes either of them, the merged
    model stores both and its config says ``tie_word_embeddings: false``: a tied model
    could not hold what base + adapter computes. Returns what was done: tensors updated, the worst
    probe error, the shards written and whether the embeddings were untied.
    """
    adapter = LoraAdapter.load(adapter_dir)
    untie = None
    if architecture.tied and any(name in adapter.updates for name in architecture.tied):
        untie = architecture.tied
    writer = ShardWriter(out_dir, shard_bytes)
    stacked_deltas = StackedDeltas(architecture, adapter)
    applied: set[str] = set()
    worst = 0.0

    def add(key: str, module: str, tensor: torch.Tensor) -> None:
        nonlocal worst
        # an expert stack's parts are named as transformers saves the model, which may
        # differ from the checkpoint by the prefix of a packaged text model (Llama 4's)
        stacked = (stacked_deltas.pop(key)
                   or stacked_deltas.pop(f"{module}.{key.rpartition('.')[2]}"))
        if stacked:
            # checked end to end: the stage compares merged/'s logits with base + adapter
            module, delta = stacked
            update, merged, error = True, tensor.float() + delta, 0.0
        else:
            update = adapter.updates.get(module)
            merged, error = _apply(tensor, update, key.rpartition(".")[2], adapter,
                                   transposed=module in architecture.transposed)
        if error > _PROBE_TOLERANCE:
            raise RuntimeError(f"merging {key} went wrong: on probe vectors it computes "
                               f"{error:.2g} (relative) away from base + adapter")
        worst = max(worst, error)
        applied.update([module] if update else [])
        # A copy: a tensor read from a shard lives in the shard's mapping, which it would
        # keep alive (the whole shard) until its output shard is written.
        writer.add(key, merged.to(dtype, copy=True))

    layout = Layout.of(base_dir)
    bar = tqdm(total=layout.numel(), desc="merging", unit="param", unit_scale=True)
    for key, tensor in layout.tensors():
        bar.update(tensor.numel())
        module = architecture.loaded_name(key).rpartition(".")[0]
        if untie and module == untie[1]:
            continue  # written from the input embedding below
        if untie and module == untie[0]:
            add(f"{untie[1]}.weight", untie[1], tensor)
        add(key, module, tensor)
        del tensor  # the last of a shard would keep its mapping alive into the next
    bar.close()
    missing = sorted(set(adapter.updates) - applied)
    if missing:
        raise UserError(f"{adapter_dir}: the adapter updates {', '.join(missing[:3])}, which "
                        f"{base_dir} does not hold; was the adapter trained on another model?")
    _write_model_config(base_dir, out_dir, dtype, untied=untie is not None)
    return {"updated_modules": len(applied), "max_probe_rel_error": worst,
            "shards": writer.close(), "untied_embeddings": untie is not None}


def _write_model_config(base_dir: Path, out_dir: Path, dtype: torch.dtype, *,
                        untied: bool) -> None:
    """The base's config.json for the merged weights: their dtype, the KV cache on, and
    untied embeddings when the merge had to store both."""
    config = json.loads((base_dir / "config.json").read_text(encoding="utf-8"))
    config["dtype"] = str(dtype).removeprefix("torch.")
    config.pop("torch_dtype", None)
    config["use_cache"] = True
    if untied:
        config["tie_word_embeddings"] = False
        if isinstance(config.get("text_config"), dict):
            config["text_config"]["tie_word_embeddings"] = False
    atomic_write_json(out_dir / "config.json", config)
    for name in _MODEL_FILES:
        if (base_dir / name).is_file():
            shutil.copy2(base_dir / name, out_dir / name)


def _apply(tensor: torch.Tensor, update: _Update | None, part: str, adapter: LoraAdapter, *,
           transposed: bool) -> tuple[torch.Tensor, float]:
    """The merged tensor (float32 when changed) and its probe check's relative error."""
    if update is None:
        return tensor, 0.0
    tensor = update.replaced.get(part, tensor)
    if part != "weight" or update.a is None or update.b is None:
        return tensor, 0.0
    # Rows are outputs: (out, in) for Linear, (vocab, dim) for Embedding; Conv1D stores
    # (in, out).
    rows = tensor.float().T if transposed else tensor.float()
    if adapter.init:
        rows = _residual(rows, update, adapter)
    merged = rows + update.delta_rows()
    if update.magnitude is not None:
        if update.embedding:
            raise UserError("DoRA on an embedding layer cannot be merged; train DoRA on "
                            "linear layers only")
        merged = merged * (update.magnitude.float() / torch.linalg.norm(merged, dim=1))[:, None]
    error = _probe(rows, merged, update)
    return (merged.T if transposed else merged), error


def _probe(rows: torch.Tensor, merged: torch.Tensor, update: _Update) -> float:
    """Relative error of the merged layer against the adapter's own form on random inputs.

    A linear layer: ``W x + s B (A x)`` (times DoRA's ``m / ‖W + s B A‖`` row scaling); an
    embedding, for a random mixture ``p`` of tokens: ``Wᵀ p + s B (A p)``.
    """
    a, b = update.a.float(), update.b.float()
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(a.shape[1], _PROBES, generator=generator)
    expected = (rows.T if update.embedding else rows) @ x + update.scale * (b @ (a @ x))
    if update.magnitude is not None:
        norm = torch.linalg.norm(rows + update.delta_rows(), dim=1)
        expected = expected * (update.magnitude.float() / norm)[:, None]
    got = (merged.T if update.embedding else merged) @ x
    return float((got - expected).norm() / expected.norm().clamp_min(1e-30))
