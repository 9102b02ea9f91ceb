"""The ``export`` stage: every configured exporter writes from ``merged/``.

The exporters' engines live with their plugins (the built-in GGUF one in
``lorapipe.plugins.exporters.gguf``); ``stage`` only checks ``merged/``, calls each
exporter and records what it wrote.
"""

from lorapipe.export.stage import run_stage

__all__ = ["run_stage"]
