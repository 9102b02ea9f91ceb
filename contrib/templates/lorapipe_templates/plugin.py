"""Entry point of ``lorapipe-templates``: registers chatml, alpaca, vicuna and mistral."""

from __future__ import annotations

from lorapipe.plugin import hookimpl
from lorapipe_templates.alpaca import AlpacaTemplate
from lorapipe_templates.chatml import ChatMLTemplate
from lorapipe_templates.mistral import MistralTemplate
from lorapipe_templates.vicuna import VicunaTemplate


@hookimpl
def lorapipe_register_chat_templates(register):  # noqa: ANN001, ANN201 - pluggy hook
    register(ChatMLTemplate)
    register(AlpacaTemplate)
    register(VicunaTemplate)
    register(MistralTemplate)
