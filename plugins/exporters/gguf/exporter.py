"""The built-in ``gguf`` exporter: llama.cpp files from the merged model.

A thin shell over the engine beside it (``writer.py``): options, provenance, file names.
"""

from __future__ import annotations

import json
import sys
from importlib.metadata import version
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, field_validator

from lorapipe.plugin import Exporter, Options, RunInfo, UserError, hookimpl

SCORES = "scores.json"  # the score option's report, beside the files it scored

GgufType = Literal["f32", "f16", "bf16", "q8_0", "q4_0", "q4_k_m", "q4_k_s", "q5_k_m", "q6_k"]


class GgufScore(Options):
    """Score each file through llama.cpp on the held-out set (``score: {}`` for defaults)."""

    max_increase: float = Field(0.05, gt=0)  # response perplexity vs merged/, relative
    on_exceed: Literal["warn", "fail"] = "warn"
    max_samples: int = Field(200, ge=1)


class GgufOptions(Options):
    types: list[GgufType] = Field(default_factory=lambda: ["q8_0"], min_length=1)
    score: GgufScore | None = None
    # also the LoRA adapter alone, for llama.cpp's --lora on a GGUF of the base model
    adapter: list[Literal["f32", "f16"]] = Field(default_factory=list)

    @field_validator("score")
    @classmethod
    def _llama_cpp_installed(cls, score: GgufScore | None) -> GgufScore | None:
        import importlib.util

        if score is not None and importlib.util.find_spec("llama_cpp") is None:
            raise ValueError("scoring GGUF files runs llama.cpp: pip install "
                             "'lorapipe[llama-cpp]' (or remove score)")
        return score

    @field_validator("types")
    @classmethod
    def _producible(cls, types: list[str]) -> list[str]:
        from .writer import can_produce, gguf_version

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
    """GGUF for llama.cpp, tokenizer and chat template included.

    f32, f16, bf16 and q8_0 hold one type (F16 where rows do not fit its blocks), q4_0 too
    but for its Q6_K output layer;
    q4_k_m, q4_k_s, q5_k_m and q6_k are llama-quantize's mixes, byte for byte.
    """

    name = "gguf"
    Options = GgufOptions

    def check(self, model_dir: Path) -> None:
        from .writer import check_model

        check_model(model_dir)

    def export(self, merged_dir: Path, out_dir: Path, run: RunInfo | None) -> list[Path]:
        """Each GGUF with an Ollama Modelfile beside it (``model-<type>.Modelfile``), the
        adapter GGUFs asked for, and ``scores.json`` when ``score`` is set."""
        from transformers import AutoTokenizer

        from lorapipe.plugin import atomic_write_text, from_pretrained

        from .adapter import write_adapter_gguf
        from .modelfile import modelfile
        from .writer import write_gguf

        provenance = _provenance(run) if run is not None else {}
        tokenizer = from_pretrained(AutoTokenizer, merged_dir,
                                    trust_remote_code=run is not None and run.trust_remote_code)
        written, ggufs = [], []
        for type_name in self.options.types:
            gguf = write_gguf(merged_dir, out_dir / f"model-{type_name}.gguf", type_name,
                              provenance).path
            recipe = gguf.with_suffix(".Modelfile")
            atomic_write_text(recipe, modelfile(gguf.name, tokenizer,
                                                run.max_length if run is not None else None))
            written += [gguf, recipe]
            ggufs.append(gguf)
        for type_name in self.options.adapter:
            if run is None:
                raise UserError("the gguf exporter's adapter option needs the run's adapter/; "
                                "export within a run")
            written.append(write_adapter_gguf(
                run.paths.adapter, merged_dir, out_dir / f"adapter-{type_name}.gguf", type_name,
                {"base_model": run.base_model, "config_hash": run.config_hash}))
        if self.options.score is not None:
            if run is None:
                raise UserError("the gguf exporter's score option needs the run's held-out "
                                "data; export within a run")
            written.append(self._score(merged_dir, out_dir, run, ggufs))
        return written

    def _score(self, merged_dir: Path, out_dir: Path, run: RunInfo, files: list[Path]) -> Path:
        """``scores.json``: each file's response perplexity beside merged/'s; a user error
        when one rose more than allowed and ``on_exceed: fail``."""
        from lorapipe.plugin import atomic_write_text

        from .score import Samples, gguf_perplexity, merged_perplexity, score_report

        score = self.options.score
        samples = Samples.held_out(run.paths, score.max_samples)
        merged = merged_perplexity(merged_dir, samples, trust_remote_code=run.trust_remote_code)
        report = score_report(merged,
                              {f.name: gguf_perplexity(f, samples) for f in files},
                              score.max_increase, samples.split)
        atomic_write_text(out_dir / SCORES, json.dumps(report, indent=2) + "\n")
        if report["exceeded"]:
            worst = ", ".join(f"{name} {report['files'][name]['increase']:+.1%}"
                              for name in report["exceeded"])
            message = (f"response perplexity on the {samples.split} split rose more than "
                       f"{score.max_increase:.0%} over merged/ ({report['merged']:.4g}) in "
                       f"{worst}; ship a type with more bits (q8_0, q6_k, q5_k_m)")
            if score.on_exceed == "fail":
                raise UserError(f"{self.field}.score: {message}, or set on_exceed: warn")
            print(f"warning: {message}", file=sys.stderr)
        return out_dir / SCORES

    def scores(self, out_dir: Path) -> dict[str, Any] | None:
        """What ``score`` measured (``scores.json``), for run.json and the run's summary."""
        path = out_dir / SCORES
        return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None


def _provenance(run: RunInfo) -> dict[str, Any]:
    """Where the weights came from, so a GGUF file found later can be traced to its run."""
    extra: dict[str, Any] = {
        "version": version("lorapipe"),
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
