"""The ``evaluate`` stage and what evaluators use to score base vs fine-tuned."""

from lorapipe.evaluate.generate import generate
from lorapipe.evaluate.nll import NllTotals, token_nll
from lorapipe.evaluate.stage import run_stage

__all__ = ["NllTotals", "generate", "run_stage", "token_nll"]
