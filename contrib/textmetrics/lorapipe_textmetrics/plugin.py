"""Entry point of ``lorapipe-textmetrics``: registers exact_match, rouge_l and bleu."""

from __future__ import annotations

from lorapipe.plugin import hookimpl
from lorapipe_textmetrics.metrics import Bleu, ExactMatch, RougeL


@hookimpl
def lorapipe_register_evaluators(register):  # noqa: ANN001, ANN201 - pluggy hook
    register(ExactMatch)
    register(RougeL)
    register(Bleu)
