"""The built-in ``gguf`` exporter: llama.cpp files from the merged model.

A thin shell over ``lorapipe.export.gguf_writer``: options, provenance, file names.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, field_validator

from lorapipe import __version__
from lorapipe.plugin import Exporter, Options, RunInfo, hookimpl

GgufType = Literal["f32", "f16", "bf16", "q8_0", "q4_0", "q4_k"]


class GgufOptions(Options):
    types: list[GgufType] = Field(default_factory=lambda: ["q8_0"], min_length=1)

    @field_validator("types")
    @classmethod
    def _producible(cls, types: list[str]) -> list[str]:
        from lorapipe.export.gguf_writer import can_produce, gguf_version

        if len(set(types)) != len(types):
            raise ValueError(f"each GGUF type once, please (got {types})")
        missing = [t for t in types if not can_produce(t)]
        if missing:
            raise ValueError(
                f"the installed gguf package {gguf_version()} cannot quantize to "
                f"{', '.join(missing)}; use q4_0 or q8_0, or export f16 and run llama.cpp's "
                "llama-quantize"
            )
        return types


class GgufExporter(Exporter):
    """GGUF for llama.cpp (f32, f16, bf16, q8_0, q4_0), tokenizer and chat template included."""

    name = "gguf"
    Options = GgufOptions

    def check(self, model_dir: Path) -> None:
        from lorapipe.export.gguf_writer import check_model

        check_model(model_dir)

    def export(self, merged_dir: Path, out_dir: Path, run: RunInfo | None) -> list[Path]:
        from lorapipe.export.gguf_writer import write_gguf

        provenance = _provenance(run) if run is not None else {}
        return [
            write_gguf(merged_dir, out_dir / f"model-{type_name}.gguf", type_name, provenance).path
            for type_name in self.options.types
        ]


def _provenance(run: RunInfo) -> dict[str, Any]:
    """Where the weights came from, so a GGUF file found later can be traced to its run."""
    extra: dict[str, Any] = {
        "version": __version__,
        "config_hash": run.config_hash,
        "quantizer": run.quantizer,
    }
    adapter_config = run.paths.adapter / "adapter_config.json"
    if adapter_config.is_file():
        saved = json.loads(adapter_config.read_text(encoding="utf-8"))
        extra.update({
            "adapter.r": saved.get("r"),
            "adapter.alpha": saved.get("lora_alpha"),
            "adapter.target_modules": sorted(saved.get("target_modules") or []),
            "adapter.use_rslora": saved.get("use_rslora"),
            "adapter.use_dora": saved.get("use_dora"),
        })
    return {
        "name": f"{Path(run.base_model).name}-lorapipe",
        "base_model": run.base_model,
        "lorapipe": extra,
    }


@hookimpl
def lorapipe_register_exporters(register):  # noqa: ANN001, ANN201 - pluggy hook
    register(GgufExporter)
