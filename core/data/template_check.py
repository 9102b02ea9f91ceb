"""The chat template tried on a plain exchange before any record is read.

A template that cannot work with this model's tokenizer (special tokens it lacks, no
chat template of its own, a template that renders no reply) fails once, at the start,
with advice that fits this model: the installed templates that do work with its
tokenizer, found by trying each on the same exchange.
"""

from __future__ import annotations

from typing import Any

from lorapipe.components import ChatTemplate, UnrenderableConversation
from lorapipe.errors import ConfigError, UserError
from lorapipe.plan import RunPlan

PROBE = [{"role": "user", "content": "What is 2 plus 2?"},
         {"role": "assistant", "content": "2 plus 2 is 4."}]


def _works(template: ChatTemplate, tokenizer: Any) -> bool:
    try:
        template.encode(PROBE, tokenizer)
    except (UserError, UnrenderableConversation):
        return False
    return True


def usable_templates(plan: RunPlan, tokenizer: Any) -> list[str]:
    """Names of the installed templates (default options) that work with ``tokenizer``."""
    return [template.name
            for template in plan.registry.with_defaults("chat_template", plan.template.field)
            if isinstance(template, ChatTemplate) and _works(template, tokenizer)]


def check_template(plan: RunPlan, tokenizer: Any) -> None:
    """Raise a user error, with the templates that would work, if the configured one
    cannot encode a plain user/assistant exchange with this tokenizer."""
    template = plan.template
    try:
        template.encode(PROBE, tokenizer)
        return
    except UnrenderableConversation as err:
        problem = ConfigError(template.field, f"template '{template.name}' cannot render a "
                                              f"plain user/assistant exchange: {err}")
    except UserError as err:
        problem = err
    others = [name for name in usable_templates(plan, tokenizer) if name != template.name]
    advice = (f"Templates that work with this model's tokenizer: {', '.join(others)}"
              if others else "No installed chat template works with this model's tokenizer")
    raise UserError(f"{problem}. {advice} (lorapipe components chat_template); for raw text "
                    "or prompt/completion data, which needs no template, set data.format: "
                    "text or prompt_completion") from None
