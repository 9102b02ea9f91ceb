"""The built-in ``perplexity`` evaluator: base vs fine-tuned perplexity on validation data."""

from __future__ import annotations

from typing import Any

from pydantic import Field

from lorapipe.plugin import EvalContext, Evaluator, Options, hookimpl


class PerplexityOptions(Options):
    batch_size: int = Field(8, ge=1)


class PerplexityEvaluator(Evaluator):
    """Perplexity over response, prompt and all tokens; base (adapter off) vs fine-tuned."""

    name = "perplexity"
    Options = PerplexityOptions

    def evaluate(self, context: EvalContext) -> dict[str, Any]:
        from tqdm import tqdm

        from lorapipe.evaluate.nll import bootstrap_ci, token_nll

        kwargs = {"batch_size": self.options.batch_size, "pad_id": context.pad_token_id}
        results = {}
        with tqdm(total=2 * len(context.dataset), desc="perplexity", unit="seq") as bar:
            with context.base() as base:
                results["base"] = token_nll(base, context.dataset, progress=bar.update, **kwargs)
            results["finetuned"] = token_nll(context.model, context.dataset,
                                             progress=bar.update, **kwargs)
        base, tuned = (results[k].perplexity() for k in ("base", "finetuned"))
        return {
            "base": base,
            "finetuned": tuned,
            "change": {
                part: tuned[part] - base[part] if base[part] and tuned[part] else None
                for part in base
            },
            "tokens": results["base"].tokens,
            "ci95": bootstrap_ci(results["base"], results["finetuned"]),
            "sequences": len(context.dataset),
        }


@hookimpl
def lorapipe_register_evaluators(register):  # noqa: ANN001, ANN201 - pluggy hook
    register(PerplexityEvaluator)
