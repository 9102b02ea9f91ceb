"""Model cards for ``adapter/`` and ``merged/``: what the hub and people read first.

The YAML front matter is built by huggingface_hub's ``ModelCardData`` (the fields the hub
indexes: ``base_model``, ``library_name``, ``pipeline_tag``, ``tags``, ``datasets``,
``license``); the body says what was trained on what, with which settings, how it scored
against the base, and how to load it. Everything comes from the run directory (the
resolved config, ``adapter_config.json``, ``eval/report.json``), so a card never claims
what the run did not record.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal

import yaml

from lorapipe import __version__
from lorapipe.artifacts import RunPaths

CARD = "README.md"


def write_model_card(out_dir: Path, paths: RunPaths, kind: Literal["adapter", "merged"],
                     training: dict[str, Any] | None = None) -> Path | None:
    """Write ``out_dir/README.md`` for the adapter or the merged model of the run at
    ``paths``; ``training`` is the train stage's summary when the caller has it.

    None when there is no run to describe (the training loop driven directly, without
    the resolved config a stage writes first).
    """
    from huggingface_hub import ModelCard, ModelCardData

    if not paths.resolved_config.is_file():
        return None
    config = yaml.safe_load(paths.resolved_config.read_text(encoding="utf-8"))
    adapter_config = (out_dir if kind == "adapter" else paths.adapter) / "adapter_config.json"
    adapter = (json.loads(adapter_config.read_text(encoding="utf-8"))
               if adapter_config.is_file() else {})
    base = config["model"]["name_or_path"]
    quantizer = (config["model"].get("quantizer") or {}).get("name", "none")
    quantized = quantizer != "none"
    tags = ["lorapipe", "qlora" if quantized else "lora", "text-generation"]
    if adapter.get("use_dora"):
        tags.append("dora")
    data = ModelCardData(
        base_model=base,
        library_name="peft" if kind == "adapter" else "transformers",
        pipeline_tag="text-generation",
        tags=tags,
        datasets=_dataset_names(config) or None,
        license=_base_license(adapter.get("base_model_name_or_path")),
    )
    # Only merged/ is written after evaluate: a report beside a retrained adapter is stale.
    evaluation = (_evaluation_table(paths.eval_report)
                  if kind == "merged" and paths.eval_report.is_file() else "")
    body = "\n\n".join(part for part in (
        _title(base, kind, quantized),
        _settings_table(config, adapter, quantizer, training),
        evaluation,
        _how_to_load(kind, base),
    ) if part)
    card = ModelCard(f"---\n{data.to_yaml()}\n---\n\n{body}\n")
    card.save(out_dir / CARD)
    return out_dir / CARD


def _dataset_names(config: dict[str, Any]) -> list[str]:
    """The sources the data came from: the files' names, or a loader's hub dataset id."""
    data = config.get("data") or {}
    refs = [data.get("loader")] + [(data.get(part) or {}).get("loader")
                                   for part in ("validation", "test")]
    names: list[str] = []
    for ref in refs:
        if not isinstance(ref, dict):
            continue
        if ref.get("path"):
            paths = ref["path"] if isinstance(ref["path"], list) else [ref["path"]]
            names += [Path(str(path)).name for path in paths]
        elif ref.get("dataset"):  # the hf loader: a hub id, or a local directory
            local = Path(str(ref["dataset"]))
            names.append(local.name if local.exists() else str(ref["dataset"]))
    return list(dict.fromkeys(names))


def _base_license(base_dir: str | None) -> str | None:
    """The base's license, when its own card (a local README.md) declares one."""
    if not base_dir or not (Path(base_dir) / CARD).is_file():
        return None
    from huggingface_hub import ModelCard

    try:
        return ModelCard.load(Path(base_dir) / CARD).data.to_dict().get("license")
    except (ValueError, yaml.YAMLError):
        return None  # a card without valid front matter declares nothing


def _title(base: str, kind: str, quantized: bool) -> str:
    what = "LoRA adapter" if kind == "adapter" else "merged model (base + LoRA adapter)"
    method = "QLoRA (4-bit base)" if quantized else "LoRA"
    return (f"# {Path(base).name}, fine-tuned: {what}\n\n"
            f"Fine-tuned from `{base}` with {method} by lorapipe {__version__}.")


def _settings_table(config: dict[str, Any], adapter: dict[str, Any], quantizer: str,
                    training: dict[str, Any] | None) -> str:
    train = config.get("train") or {}
    rows = [
        ("LoRA rank / alpha", f"{adapter.get('r')} / {adapter.get('lora_alpha')}"),
        ("target modules", ", ".join(sorted(adapter.get("target_modules") or []))),
        ("DoRA / rsLoRA", f"{bool(adapter.get('use_dora'))} / {bool(adapter.get('use_rslora'))}"),
        ("quantizer", quantizer),
        ("learning rate, schedule", f"{train.get('learning_rate')}, {train.get('lr_scheduler')}"),
        ("epochs", train.get("epochs")),
        ("micro batch × accumulation", f"{train.get('micro_batch_size')} × "
                                       f"{train.get('gradient_accumulation_steps')}"),
        ("max length", (config.get("data") or {}).get("max_length")),
        ("chat template", ((config.get("data") or {}).get("template") or {}).get("name")),
    ]
    if training:
        rows += [("optimizer steps", training.get("steps")),
                 ("trained tokens", training.get("trained_tokens")),
                 ("best validation loss", _number(training.get("best_eval_loss")))]
    lines = ["## Training", "", "| setting | value |", "|---|---|"]
    lines += [f"| {name} | {value} |" for name, value in rows if value not in (None, "")]
    return "\n".join(lines)


def _evaluation_table(report_path: Path) -> str:
    """Base vs fine-tuned for every metric an evaluator scored on both, with the 95%
    interval of the change when the evaluator gives one."""
    report = json.loads(report_path.read_text(encoding="utf-8"))
    lines = ["## Evaluation", "", "| evaluator | split | metric | base | fine-tuned | change "
             "(95% CI) |", "|---|---|---|---|---|---|"]
    for evaluator, scores in report.items():
        if not isinstance(scores, dict):
            continue
        base, tuned = scores.get("base") or {}, scores.get("finetuned") or {}
        interval = (scores.get("ci95") or {}).get("change") or {}
        own = (scores.get("ci95") or {}).get("finetuned") or {}
        for metric, value in base.items():
            if value is None and isinstance(tuned.get(metric), int | float):
                ci = own.get(metric)  # a score of the fine-tuned model alone (a reward)
                ci_text = f" ({_number(ci[0])} … {_number(ci[1])})" if ci else ""
                lines.append(f"| {evaluator} | {scores.get('split', 'validation')} | {metric} | "
                             f"— | {_number(tuned[metric])}{ci_text} | — |")
            elif isinstance(value, int | float) and isinstance(tuned.get(metric), int | float):
                change = tuned[metric] - value
                ci = interval.get(metric)
                ci_text = f" ({_number(ci[0])} … {_number(ci[1])})" if ci else ""
                lines.append(f"| {evaluator} | {scores.get('split', 'validation')} | {metric} | "
                             f"{_number(value)} | {_number(tuned[metric])} | "
                             f"{_number(change)}{ci_text} |")
    return "\n".join(lines) if len(lines) > 4 else ""


def _how_to_load(kind: str, base: str) -> str:
    if kind == "adapter":
        code = ("from peft import AutoPeftModelForCausalLM\n"
                "from transformers import AutoTokenizer\n\n"
                "# the base model is read from adapter_config.json\n"
                'model = AutoPeftModelForCausalLM.from_pretrained("PATH_TO_THIS_FOLDER")\n'
                "# the tokenizer with the chat template the run trained with: merged/ or\n"
                "# the run's data/tokenizer (the base's own, when its template was used)\n"
                f'tokenizer = AutoTokenizer.from_pretrained("{base}")')
    else:
        code = ("from transformers import AutoModelForCausalLM, AutoTokenizer\n\n"
                'model = AutoModelForCausalLM.from_pretrained("PATH_TO_THIS_FOLDER")\n'
                'tokenizer = AutoTokenizer.from_pretrained("PATH_TO_THIS_FOLDER")')
    return f"## How to load\n\n```python\n{code}\n```"


def _number(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, int | float) else str(value)
