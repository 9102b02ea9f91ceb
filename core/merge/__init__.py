"""The ``merge`` stage: the adapter folded into a full-precision copy of the base."""

from lorapipe.merge.stage import run_stage

__all__ = ["run_stage"]
