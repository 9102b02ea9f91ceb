"""Batched greedy generation from conversations, for generation-based evaluators."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from tqdm import tqdm


def _prompt(messages: list[dict[str, str]]) -> list[dict[str, str]]:
    """The conversation up to (not including) its last assistant reply."""
    last = max((i for i, m in enumerate(messages) if m.get("role") == "assistant"), default=None)
    return messages[:last] if last is not None else messages


@torch.no_grad()
def generate(model: Any, tokenizer: Any, template: Any,
             conversations: list[list[dict[str, str]]], *, max_new_tokens: int,
             pad_token_id: int, batch_size: int = 8, desc: str = "generating",
             tools: Sequence[Any | None] | None = None) -> list[str]:
    """The model's greedy reply to each conversation's prompt, in order.

    The prompt is the conversation before its last assistant message, rendered by
    ``template.generation_prompt`` (so it ends with the header that starts a reply), with
    each conversation's ``tools`` where the template renders tools. Prompts are
    left-padded so every row's new tokens start at the same column.
    """
    model.eval()
    device = next(model.parameters()).device
    pad_id = pad_token_id
    renders_tools = "tools" in getattr(template, "renders", ())
    prompts = [template.generation_prompt(_prompt(conv), tokenizer,
                                          **({"tools": defined} if renders_tools and defined
                                             else {}))
               for conv, defined in zip(conversations, tools or [None] * len(conversations),
                                        strict=True)]
    replies: list[str] = []
    bar = tqdm(total=len(prompts), desc=desc, unit="seq")
    for start in range(0, len(prompts), batch_size):
        batch = prompts[start : start + batch_size]
        width = max(len(p) for p in batch)
        ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
        mask = torch.zeros((len(batch), width), dtype=torch.long)
        for i, prompt in enumerate(batch):
            ids[i, width - len(prompt):] = torch.tensor(prompt)
            mask[i, width - len(prompt):] = 1
        out = model.generate(
            input_ids=ids.to(device), attention_mask=mask.to(device), do_sample=False,
            max_new_tokens=max_new_tokens, pad_token_id=pad_id,
        )
        replies += tokenizer.batch_decode(out[:, width:], skip_special_tokens=True)
        bar.update(len(batch))
    bar.close()
    return replies
