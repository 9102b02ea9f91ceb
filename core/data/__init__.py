"""The ``prepare`` stage: raw records in, tokenized, assistant-masked train/validation sets out.

One module per step: ``schemas`` (file formats → canonical conversations), ``cleaning``
(validation and dedupe keys), ``encoding`` (reading, templating and tokenizing a source in
worker processes), ``length`` (max_length strategies), ``split``, ``report`` (drop
accounting and statistics), ``cache`` (fingerprints), ``chunks`` (encoded data in Arrow
chunks, written out as splits in bounded memory) and ``stage`` (the stage that strings
them together). Template authors' helpers live in ``lorapipe.authoring``.
"""
