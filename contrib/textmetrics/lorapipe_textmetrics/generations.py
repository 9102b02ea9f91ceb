"""Greedy replies of the base and the fine-tuned model to the validation prompts.

Each prompt is a validation conversation up to its last assistant message, rendered by
the run's chat template; the reference is that message. Both models get identical
prompts and greedy decoding (lorapipe's batched ``generate``), so the scores differ only
by the adapter. The replies are kept in the evaluation context's ``shared`` cache, per
settings: three metrics configured together cost one generation pass, not three.
"""

from __future__ import annotations

from dataclasses import dataclass

from pydantic import Field

from lorapipe.plugin import EvalContext, Options


class GenerationOptions(Options):
    max_new_tokens: int = Field(64, ge=1)
    batch_size: int = Field(8, ge=1)
    max_samples: int | None = Field(None, ge=1)  # None: the whole validation set


@dataclass(frozen=True)
class Generations:
    conversations: list[list[dict[str, str]]]
    references: list[str]
    base: list[str]
    finetuned: list[str]


def generations(context: EvalContext, options: GenerationOptions) -> Generations:
    """The (cached) references and both models' greedy replies for ``context``."""
    key = (__name__, options.max_new_tokens, options.max_samples)
    if key not in context.shared:
        context.shared[key] = _generate(context, options)
    return context.shared[key]


def _generate(context: EvalContext, options: GenerationOptions) -> Generations:
    from lorapipe.plugin import generate  # torch: only when generating

    conversations = [c for c in context.conversations()
                     if any(m["role"] == "assistant" for m in c)]
    conversations = conversations[: options.max_samples]
    references = [next(m["content"] for m in reversed(c) if m["role"] == "assistant")
                  for c in conversations]
    kwargs = {"max_new_tokens": options.max_new_tokens, "batch_size": options.batch_size}
    with context.base() as base:
        base_replies = generate(base, context.tokenizer, context.template, conversations,
                                pad_token_id=context.pad_token_id, desc="base replies",
                                **kwargs)
    tuned = generate(context.model, context.tokenizer, context.template, conversations,
                     pad_token_id=context.pad_token_id, desc="fine-tuned replies", **kwargs)
    return Generations(conversations, references, base_replies, tuned)
