"""The built-in ``perplexity`` evaluator: base vs fine-tuned perplexity on held-out data,
and the forgetting check on general text.

Fine-tuning on a narrow task can make a model worse at everything else. The check
scores text unlike the training data (``general``: plain-text or JSONL files, or any
loader's records) with the
base and the fine-tuned model; a rise in perplexity beyond ``max_general_increase`` is
reported as forgetting, and fails the evaluation when ``on_forgetting: fail``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, model_validator

from lorapipe.plugin import EvalContext, Evaluator, Loader, Options, Part, UserError, hookimpl


class GeneralText(Options):
    """Documents of general text: a .txt file (one per non-empty line), a .jsonl file
    (a ``text`` field per line), or the ``field`` of a loader's records (any source: e.g.
    ``{name: hf, dataset: wikitext, subset: wikitext-2-raw-v1, split: test}``)."""

    path: Path | None = None
    loader: Part[Loader] | None = None  # the plan builds it: a typo fails at validate
    field: str = "text"
    max_documents: int = Field(1000, ge=1)  # the first ones; every one costs two passes
    max_tokens: int = Field(512, ge=16)  # each document is cut to this many tokens

    @model_validator(mode="after")
    def _one_source(self) -> GeneralText:
        if (self.path is None) == (self.loader is None):
            raise ValueError("give either path (a .txt or .jsonl file) or loader")
        return self


class PerplexityOptions(Options):
    batch_size: int = Field(8, ge=1)
    general: dict[str, GeneralText] = Field(default_factory=dict)
    max_general_increase: float = Field(0.05, gt=0)  # the design's rule: at most +5%
    on_forgetting: Literal["warn", "fail"] = "warn"


def read_documents(path: Path) -> list[str]:
    """The documents of a general-text file; a user error names a bad file or line."""
    path = path.expanduser()
    if not path.is_file():
        raise UserError(f"{path}: not found (perplexity general text)")
    lines = path.read_text(encoding="utf-8").splitlines()
    if path.suffix != ".jsonl":
        documents = [line for line in lines if line.strip()]
    else:
        documents = []
        for number, line in enumerate(lines, start=1):
            if not line.strip():
                continue
            try:
                text = json.loads(line)["text"]
            except (json.JSONDecodeError, KeyError, TypeError):
                raise UserError(f"{path}:{number}: expected a JSON object with a "
                                "\"text\" field") from None
            if not isinstance(text, str):
                raise UserError(f"{path}:{number}: \"text\" must be a string")
            documents.append(text)
    if not documents:
        raise UserError(f"{path}: no documents in it (perplexity general text)")
    return documents


def loader_documents(loader: Loader, field: str, limit: int) -> tuple[list[str], dict[str, int]]:
    """The first ``limit`` non-empty ``field`` texts of ``loader``'s records, and how many
    records were dropped for each reason (unreadable, no such text field, empty)."""
    documents: list[str] = []
    dropped: dict[str, int] = {}
    for record in loader.records():
        if len(documents) == limit:
            break
        text = record.data.get(field) if record.data is not None else None
        reason = (record.error.reason if record.error is not None
                  else f"no_{field}" if not isinstance(text, str)
                  else "empty" if not text.strip() else None)
        if reason is not None:
            dropped[reason] = dropped.get(reason, 0) + 1
        else:
            documents.append(text)
    return documents, dropped


class PerplexityEvaluator(Evaluator):
    """Perplexity over response, prompt and all tokens; base (adapter off) vs fine-tuned;
    general text base vs fine-tuned (forgetting)."""

    name = "perplexity"
    Options = PerplexityOptions

    def evaluate(self, context: EvalContext) -> dict[str, Any]:
        from lorapipe.plugin import bootstrap_ci

        base, tuned = self._both(context, context.dataset, "perplexity")
        base_ppl, tuned_ppl = base.perplexity(), tuned.perplexity()
        report: dict[str, Any] = {
            "base": base_ppl,
            "finetuned": tuned_ppl,
            "change": {
                part: tuned_ppl[part] - base_ppl[part] if base_ppl[part] and tuned_ppl[part]
                else None for part in base_ppl
            },
            "tokens": base.tokens,
            "ci95": bootstrap_ci(base, tuned),
            "sequences": len(context.dataset),
        }
        if self.options.general:
            report["general"] = {name: self._general(context, name, source)
                                 for name, source in self.options.general.items()}
            forgot = [name for name, result in report["general"].items() if result["forgetting"]]
            report["forgetting"] = forgot
            if forgot and self.options.on_forgetting == "fail":
                detail = "; ".join(
                    f"{name}: {report['general'][name]['base']:.4g} → "
                    f"{report['general'][name]['finetuned']:.4g}" for name in forgot)
                raise UserError(
                    f"forgetting: perplexity on general text rose more than "
                    f"{self.options.max_general_increase:.0%} ({detail}); lower "
                    "train.learning_rate or epochs, mix general data into training, or set "
                    "evaluate.evaluators perplexity on_forgetting: warn")
        return report

    def _both(self, context: EvalContext, dataset: Any, label: str) -> tuple[Any, Any]:
        from tqdm import tqdm

        from lorapipe.plugin import token_nll

        kwargs = {"batch_size": self.options.batch_size, "pad_id": context.pad_token_id}
        with tqdm(total=2 * len(dataset), desc=label, unit="seq") as bar:
            with context.base() as base:
                base_totals = token_nll(base, dataset, progress=bar.update, **kwargs)
            tuned_totals = token_nll(context.model, dataset, progress=bar.update, **kwargs)
        return base_totals, tuned_totals

    def _general(self, context: EvalContext, name: str, source: GeneralText) -> dict[str, Any]:
        from datasets import Dataset

        if source.loader is not None:
            field = f"{self.field}.general.{name}.loader"
            documents, dropped = loader_documents(self.parts[f"general.{name}.loader"],
                                                  source.field, source.max_documents)
            if not documents:
                raise UserError(f"{field}: no record with a non-empty {source.field!r} text "
                                f"(dropped: {dropped}); set general.{name}.field")
            origin = {"loader": source.loader.name, "dropped": dropped}
        else:
            documents = read_documents(source.path)[: source.max_documents]
            origin = {"path": str(source.path)}
        encoded = context.tokenizer(documents, truncation=True, max_length=source.max_tokens)
        ids = [row for row in encoded["input_ids"] if len(row) > 1]
        dataset = Dataset.from_dict({"input_ids": ids, "labels": ids})
        base, tuned = (totals.perplexity()["all"]
                       for totals in self._both(context, dataset, f"general:{name}"))
        increase = tuned / base - 1
        return {**origin, "documents": len(ids), "base": base,
                "finetuned": tuned, "increase": increase,
                "forgetting": increase > self.options.max_general_increase}


@hookimpl
def lorapipe_register_evaluators(register):  # noqa: ANN001, ANN201 - pluggy hook
    register(PerplexityEvaluator)
