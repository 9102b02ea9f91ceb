"""The built-in ``perplexity`` evaluator: base vs fine-tuned perplexity on validation data."""

from __future__ import annotations

from lorapipe import hookimpl
from lorapipe.components import Evaluator, Options
from pydantic import Field


class PerplexityOptions(Options):
    batch_size: int = Field(8, ge=1)


class PerplexityEvaluator(Evaluator):
    """Perplexity over response, prompt and all tokens; base (adapter off) vs fine-tuned."""

    name = "perplexity"
    Options = PerplexityOptions


@hookimpl
def lorapipe_register_evaluators(register):  # noqa: ANN001, ANN201 - pluggy hook
    register(PerplexityEvaluator)
