"""Records trained without a chat template: raw documents and prompt/completion pairs.

A document is tokenized with the special tokens its tokenizer adds (BOS where it has one)
and ends with EOS; every token is trained. One longer than ``data.max_length`` becomes
consecutive blocks of that length, each repeating the last ``data.block_overlap`` tokens
of the one before as untrained context, so no token is trained twice and none is lost.

A pair is tokenized as TRL's SFT trainer does it: the prompt (with the tokenizer's
special tokens), then prompt + completion + EOS as one text, the prompt's tokens masked;
where tokenizing the two together changes the prompt's tokens (a merge across the
boundary), the completion is tokenized on its own and appended instead, so the prompt is
exactly what inference sees.
"""

from __future__ import annotations

from typing import Any

from lorapipe.components import EncodedConversation, RecordError


def _eos(tokenizer: Any) -> int:
    if tokenizer.eos_token_id is None:
        raise RecordError("no_eos", "the tokenizer defines no EOS token to end the text with")
    return tokenizer.eos_token_id


def document_blocks(ids: list[int], max_length: int, overlap: int) -> list[EncodedConversation]:
    """A tokenized document as samples of at most ``max_length`` tokens."""
    if len(ids) <= max_length:
        return [EncodedConversation(ids, [True] * len(ids))]
    blocks, step = [], max_length - overlap
    for start in range(0, len(ids), step):
        block = ids[start:start + max_length]
        context = overlap if start else 0
        if len(block) <= context:
            break  # the rest was all context of the block before
        blocks.append(EncodedConversation(block, [False] * context
                                          + [True] * (len(block) - context)))
        if start + max_length >= len(ids):
            break
    return blocks


def encode_documents(texts: list[str], tokenizer: Any, max_length: int,
                     overlap: int) -> list[list[EncodedConversation]]:
    """Each document's samples (one, or its blocks)."""
    eos = _eos(tokenizer)
    out = []
    for ids in tokenizer(texts, add_special_tokens=True)["input_ids"]:
        if not ids or ids[-1] != eos:
            ids = [*ids, eos]
        out.append(document_blocks(ids, max_length, overlap))
    return out


def encode_completion(prompt: str, completion: str, tokenizer: Any) -> EncodedConversation:
    """A prompt/completion pair: the completion and its EOS trained."""
    eos = _eos(tokenizer)
    prompt_ids = tokenizer(prompt, add_special_tokens=True)["input_ids"]
    ids = tokenizer(prompt + completion + tokenizer.eos_token,
                    add_special_tokens=True)["input_ids"]
    if ids[:len(prompt_ids)] != prompt_ids or ids[-1] != eos:
        ids = [*prompt_ids, *tokenizer(completion, add_special_tokens=False)["input_ids"], eos]
    trained = [False] * len(prompt_ids) + [True] * (len(ids) - len(prompt_ids))
    return EncodedConversation(ids, trained)


def fit_completion(encoded: EncodedConversation, max_length: int, strategy: str,
                   bos_token_id: int | None) -> tuple[EncodedConversation, bool]:
    """The pair within ``max_length``: dropped, its prompt cut from the start after the BOS
    (``truncate_prompt``: raw text has no turn structure to keep) or, another truncating
    strategy, its completion cut; raises ``RecordError('too_long')`` when even the prompt
    does not fit, or no prompt token would be left."""
    length = len(encoded.input_ids)
    if length <= max_length:
        return encoded, False
    prompt = encoded.trainable.index(True)
    if strategy == "truncate_prompt":
        head = 1 if bos_token_id is not None and encoded.input_ids[0] == bos_token_id else 0
        over = length - max_length
        if prompt - head <= over:
            raise RecordError("too_long", f"{length} tokens > data.max_length {max_length} "
                              f"with the whole prompt cut: the completion alone is too long")
        keep = [*range(head), *range(head + over, length)]
        return EncodedConversation([encoded.input_ids[i] for i in keep],
                                   [encoded.trainable[i] for i in keep]), True
    if strategy == "drop" or prompt >= max_length:
        what = "" if strategy == "drop" else " with the prompt alone leaving no room"
        raise RecordError("too_long", f"{length} tokens{what} > data.max_length {max_length}")
    return EncodedConversation(encoded.input_ids[:max_length],
                               encoded.trainable[:max_length]), True
