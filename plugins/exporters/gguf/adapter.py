"""The LoRA adapter as a GGUF for llama.cpp's ``--lora`` (what ``convert_lora_to_gguf.py``
writes): each adapted weight's ``A`` and ``B`` under the base tensor's llama.cpp name
with ``.lora_a``/``.lora_b``, and the adapter's alpha.

llama.cpp scales every pair by ``alpha / rank``. When every module shares one rank and
alpha (plain LoRA) that is written as is, like the converter does; rsLoRA
(``alpha / √rank``) and per-module ``alpha_pattern``/``rank_pattern`` cannot be said
with one alpha, so each module's own scale is folded into its ``B`` and alpha is written
as 0, which llama.cpp reads as "scale 1". Q and K ``B`` rows are reordered exactly as the
base weights are (``Family.transform``; columns reordered, as Qwen3.5's out_proj, reorder
``A``: ``Family.lora_pair``), so the pair multiplies out to the update of the GGUF's own
weight, and a weight the GGUF splits (Granite's fused gate and up) gets one
pair per part (``Family.sources``).
"""

from __future__ import annotations

from pathlib import Path

import gguf
import numpy as np

from lorapipe.plugin import LoraAdapter, UserError

from .families import model_family
from .writer import atomic_gguf

ADAPTER_TYPES = {"f32": np.float32, "f16": np.float16}


def _refuse_unsupported(adapter: LoraAdapter, adapter_dir: Path) -> None:
    """llama.cpp's LoRA applies ``s·B·A`` to linear weights and nothing else."""
    why = None
    if adapter.init:
        why = f"its {adapter.init} initialisation changed the base weights"
    elif any(u.magnitude is not None for u in adapter.updates.values()):
        why = "DoRA's magnitude vectors"
    elif any(u.replaced for u in adapter.updates.values()):
        why = "trained biases or modules_to_save"
    elif any(u.embedding for u in adapter.updates.values()):
        why = "LoRA on the embeddings"
    if why is not None:
        raise UserError(f"{adapter_dir}: llama.cpp's --lora cannot apply {why}; export the "
                        "merged model's GGUF instead (remove adapter from the gguf exporter)")
    experts = sorted(getattr(adapter.config, "target_parameters", None) or [])
    if experts:
        # llama.cpp can apply 3-D expert LoRA pairs, but one peft update of a fused
        # gate_up_proj would have to be split into gate and up pairs: not written here
        raise UserError(f"{adapter_dir}: the adapter updates fused expert weights "
                        f"(target_parameters {', '.join(experts)}), which the GGUF adapter "
                        "export does not write; export the merged model's GGUF instead "
                        "(remove adapter from the gguf exporter)")


def write_adapter_gguf(adapter_dir: Path, model_dir: Path, out_path: Path, type_name: str,
                       provenance: dict[str, str] | None = None) -> Path:
    """Write ``adapter_dir`` (a peft LoRA of the model whose config is in ``model_dir``)
    to ``out_path`` atomically."""
    family = model_family(model_dir)
    adapter = LoraAdapter.load(adapter_dir)
    _refuse_unsupported(adapter, adapter_dir)
    updates = {module: u for module, u in sorted(adapter.updates.items()) if u.a is not None}
    refused = sorted(m for m in updates if m.rsplit(".", 1)[-1] in family.lora_refused)
    if refused:
        why = family.lora_refused[refused[0].rsplit(".", 1)[-1]]
        raise UserError(f"{adapter_dir}: the adapter updates {refused[0]}: {why}; export the "
                        "merged model's GGUF instead (remove adapter from the gguf exporter), "
                        "or leave it out of adapter.target_modules")
    shapes = {(u.alpha, u.a.shape[0]) for u in updates.values()}
    uniform = len(shapes) == 1 and not adapter.config.use_rslora
    names = gguf.get_tensor_name_map(family.arch, family.n_layers)
    dtype = ADAPTER_TYPES[type_name]

    with atomic_gguf(out_path, family.arch) as writer:
        writer.add_type(gguf.GGUFType.ADAPTER)
        writer.add_string(gguf.Keys.Adapter.TYPE, "lora")
        writer.add_float32(gguf.Keys.Adapter.LORA_ALPHA,
                           float(next(iter(shapes))[0]) if uniform else 0.0)
        for key, value in (provenance or {}).items():
            writer.add_string(f"lorapipe.{key}", value)
        for module, update in updates.items():
            weight = (f"{module}.weight", (update.b.shape[0], update.a.shape[1]))
            # a fused weight llama.cpp keeps apart (gate and up) is one pair per part,
            # sharing A: its B rows are the part's rows
            for source in family.sources(dict([weight])):
                name = names.get_name(source.name, try_suffixes=(".weight",))
                if name is None:
                    raise UserError(f"{adapter_dir}: the adapter updates {module}, which has "
                                    f"no llama.cpp counterpart in the "
                                    f"{family.arch.name.lower()} architecture")
                a, b = family.lora_pair(source.name, update.a.float(),
                                        update.b.float()[source.rows or slice(None)])
                if not uniform:
                    b = b * update.scale
                for suffix, tensor in ((".lora_a", a), (".lora_b", b)):
                    writer.add_tensor(name + suffix, tensor.numpy().astype(dtype))
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
    return out_path

