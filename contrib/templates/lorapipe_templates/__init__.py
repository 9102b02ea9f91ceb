"""Named chat templates for lorapipe: ``chatml``, ``alpaca``, ``vicuna`` and ``mistral``.

Each builds its token sequence piece by piece (lorapipe's ``PieceTemplate``), so every
message's token span — and with it the assistant-only mask — is known by construction.
"""
