"""A few held-out prompts with the base and the fine-tuned model's greedy replies.

Scores say how much a fine-tune helped; a handful of replies side by side show what
changed. They go to ``eval/samples.jsonl`` for report.html, kept few and short so any
run can afford them whatever evaluators it configures.
"""

from __future__ import annotations

import json
from pathlib import Path

from lorapipe.atomic import atomic_write_text
from lorapipe.components import EvalContext
from lorapipe.evaluate.generate import generate

COUNT = 3
MAX_NEW_TOKENS = 48


def write_samples(context: EvalContext, path: Path) -> None:
    """Write the first ``COUNT`` held-out conversations with a reply: the prompt (every
    message before the last assistant one), that reply as the reference, and both
    models' greedy replies to the prompt (with the conversation's tool definitions)."""
    chosen = [(c, tools) for c, tools in zip(context.conversations(),
                                             context.conversation_tools(), strict=True)
              if any(m.get("role") == "assistant" for m in c)][:COUNT]
    if not chosen:
        return
    conversations = [c for c, _ in chosen]
    settings = {"max_new_tokens": MAX_NEW_TOKENS, "pad_token_id": context.pad_token_id,
                "tools": [tools for _, tools in chosen]}
    with context.base() as base:
        base_replies = generate(base, context.tokenizer, context.template, conversations,
                                **settings)
    tuned = generate(context.model, context.tokenizer, context.template, conversations,
                     **settings)
    lines = []
    for conversation, before, after in zip(conversations, base_replies, tuned, strict=True):
        last = max(i for i, m in enumerate(conversation) if m.get("role") == "assistant")
        lines.append(json.dumps({"prompt": conversation[:last],
                                 "reference": conversation[last]["content"],
                                 "base": before, "finetuned": after}) + "\n")
    atomic_write_text(path, "".join(lines))
