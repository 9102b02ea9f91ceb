"""The ``prepare`` stage: raw records in, tokenized, masked train/validation sets out.

One module per step: ``schemas`` (file formats → canonical records: chats, documents,
prompt/completion pairs) with ``messages`` (message shapes: tool calls, tool results,
reasoning), ``cleaning`` (validation and dedupe keys), ``samples`` (records → samples per
kind: chats through the chat template, ``documents`` without one), ``encoding`` (reading
and encoding a source in worker processes), ``length`` (max_length strategies),
``split``, ``report`` (drop accounting and statistics), ``cache`` (fingerprints),
``chunks`` (encoded data in Arrow chunks, written out as splits in bounded memory) and
``stage`` (the stage that strings them together). Template authors' helpers live in
``lorapipe.authoring``.
"""
