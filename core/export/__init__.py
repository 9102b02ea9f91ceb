"""The ``export`` stage and the GGUF engine the built-in ``gguf`` exporter drives.

``gguf_model`` describes each supported family as llama.cpp lays it out, ``gguf_vocab`` its
tokenizer, ``gguf_writer`` streams both into a GGUF file; ``stage`` runs every configured
exporter over ``merged/``.
"""

from lorapipe.export.stage import run_stage

__all__ = ["run_stage"]
