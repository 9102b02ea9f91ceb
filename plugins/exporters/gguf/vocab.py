"""The tokenizer as llama.cpp needs it: tokens, types, scores or merges, special ids, template.

llama.cpp does not run the Hugging Face tokenizer; it re-implements a fixed set of them.
Three kinds cover the supported families:

- SentencePiece (``tokenizer.ggml.model = llama``: Mistral, Gemma 2/3, Phi-3): pieces with
  their scores and types, read from ``tokenizer.model`` with the sentencepiece library,
  or from a ``tokenizer.json`` of the same kind with gguf-py's ``LlamaHfVocab``;
- byte-level BPE (``gpt2``: Llama 3, Qwen): tokens and merges, plus the pre-tokenizer,
  which llama.cpp picks by name (``tokenizer.ggml.pre``); the exporter recognises it from
  the split steps in ``tokenizer.json`` and refuses one llama.cpp would split differently
  rather than write a file that silently tokenizes wrong;
- Gemma 4's own (``gemma4``): SentencePiece-style pieces from ``tokenizer.json`` merged by
  BPE ranks, so both scores and merges.

Token types follow llama.cpp's converter exactly (a parity test compares them). The
special-token ids, merges and chat template are read by gguf-py's ``SpecialVocab``, the
code the converter uses.
"""

from __future__ import annotations

import json
import logging
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import gguf

from lorapipe.plugin import UserError

from .families import CONVERT, Family

_LLAMA3_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
                 r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")
_QWEN2_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}"
                r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")
# Qwen 3.5's: Qwen2's with combining marks (\p{M}) kept in words
_QWEN35_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?[\p{L}\p{M}]+|\p{N}"
                 r"| ?[^\s\p{L}\p{M}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")
# (split regex as tokenizer.json spells it, BPE ignore_merges) → llama.cpp's name. Llama 3
# looks whole words up before merging; "smaug-bpe" is the same split without that.
PRE_TOKENIZERS = {
    (_LLAMA3_SPLIT, True): "llama-bpe",
    (_LLAMA3_SPLIT, False): "smaug-bpe",
    (_QWEN2_SPLIT, False): "qwen2",
    (_QWEN35_SPLIT, False): "qwen35",
}
_SPACE = "\u2581"  # SentencePiece's visible space


@dataclass(frozen=True)
class GgufVocab:
    model: str  # llama.cpp tokenizer kind: "gpt2" (byte-level BPE), "llama" (SentencePiece)...
    pre: str | None
    tokens: list[str | bytes]
    token_types: list[int]
    scores: list[float] | None
    special: gguf.SpecialVocab
    add_space_prefix: bool | None

    def write(self, writer: gguf.GGUFWriter) -> None:
        if self.add_space_prefix is not None:
            writer.add_add_space_prefix(self.add_space_prefix)
        writer.add_tokenizer_model(self.model)
        if self.pre is not None:
            writer.add_tokenizer_pre(self.pre)
        writer.add_token_list(self.tokens)
        if self.scores is not None:
            writer.add_token_scores(self.scores)
        writer.add_token_types(self.token_types)
        self.special.add_to_gguf(writer, quiet=True)


def _read_json(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}


def looks_special(text: str) -> bool:
    """Added tokens some models forget to mark special; llama.cpp's converter makes them
    CONTROL all the same, so they never appear as text."""
    return (
        text in ("<pad>", "<mask>", "<2mass>", "[@BOS@]")
        or (text.startswith("<|") and text.endswith("|>"))
        or (text.startswith("<\uff5c") and text.endswith("\uff5c>"))
        or (text.startswith("<unused") and text.endswith(">"))
    )


def added_token(text: str, special: bool, trust_flag: bool = False) -> tuple[str, int]:
    """An added token's text and type as llama.cpp's converter writes them: CONTROL when
    marked special (or, unless ``trust_flag``, when it looks special), else USER_DEFINED
    with SentencePiece's '▁' written as a space (llama.cpp expects them pre-normalised)."""
    if special or (not trust_flag and looks_special(text)):
        return text, int(gguf.TokenType.CONTROL)
    return (text if trust_flag else text.replace(_SPACE, " ")), int(gguf.TokenType.USER_DEFINED)


def is_sentencepiece_json(tokenizer: dict[str, Any]) -> bool:
    """Whether a tokenizer.json describes a SentencePiece tokenizer (spaces as '▁')."""
    model = tokenizer.get("model") or {}
    return model.get("type") == "Unigram" or bool(model.get("byte_fallback")) or (
        _SPACE in json.dumps(tokenizer.get("normalizer") or {}, ensure_ascii=False)
    )


def detect_pre_tokenizer(tokenizer: dict[str, Any], where: Path) -> str:
    """llama.cpp's name for the byte-level pre-tokenizer ``tokenizer.json`` describes."""
    pre = tokenizer.get("pre_tokenizer") or {}
    ignore_merges = bool((tokenizer.get("model") or {}).get("ignore_merges"))
    steps = pre.get("pretokenizers", []) if pre.get("type") == "Sequence" else [pre]
    kinds = [step.get("type") for step in steps]
    if (
        kinds == ["Split", "ByteLevel"]
        and (steps[0].get("pattern", {}).get("Regex"), ignore_merges) in PRE_TOKENIZERS
        and steps[0].get("behavior") == "Isolated"
        and not steps[0].get("invert")
        and not steps[1].get("use_regex", True)
        and not steps[1].get("add_prefix_space", False)
    ):
        return PRE_TOKENIZERS[steps[0]["pattern"]["Regex"], ignore_merges]
    if (
        kinds == ["Digits", "ByteLevel"]
        and steps[0].get("individual_digits")
        and steps[1].get("use_regex", True)
        and not steps[1].get("add_prefix_space", False)
        and not ignore_merges
    ):
        return "command-r"  # each digit alone, then GPT-2's split: llama.cpp's command-r
    raise UserError(
        f"{where}: pre-tokenizer {' + '.join(str(k) for k in kinds) or 'none'} is not one the "
        "GGUF exporter can map to llama.cpp; supported: the regex splits of Llama 3 "
        "(llama-bpe), Qwen2/3 (qwen2) and Qwen 3.5 (qwen35) + byte-level, and Command R's "
        f"digits + byte-level (command-r). Convert with llama.cpp: {CONVERT}"
    )


def _byte_level_bpe(model_dir: Path, tokenizer: dict[str, Any],
                    vocab_size: int) -> tuple[list[str | bytes], list[int], str]:
    where = model_dir / "tokenizer.json"
    model = tokenizer.get("model") or {}
    if model.get("type") != "BPE":
        raise UserError(
            f"{where}: tokenizer model {model.get('type')!r} is not supported by the GGUF "
            f"exporter; supported: SentencePiece and byte-level BPE. Convert with llama.cpp: "
            f"{CONVERT}"
        )
    pre = detect_pre_tokenizer(tokenizer, where)
    by_id: dict[int, tuple[str, int]] = {
        int(i): (text, gguf.TokenType.NORMAL) for text, i in model["vocab"].items()
    }
    for added in tokenizer.get("added_tokens", []):
        by_id[int(added["id"])] = added_token(added["content"], bool(added.get("special")))
    if by_id and max(by_id) >= vocab_size:
        raise UserError(
            f"{where}: token id {max(by_id)} does not fit the model's vocab_size {vocab_size} "
            "(config.json); resize the embeddings when adding tokens"
        )
    tokens: list[str | bytes] = []
    types: list[int] = []
    for i in range(vocab_size):
        # Rows of the embedding no token uses (vocab padded for speed) get placeholders.
        text, kind = by_id.get(i, (f"[PAD{i}]", gguf.TokenType.UNUSED))
        tokens.append(text)
        types.append(int(kind))
    return tokens, types, pre


def _sentencepiece(model_dir: Path, vocab_size: int, tokenizer_json_last: bool,
                   ) -> tuple[list[str | bytes], list[int], list[float]]:
    """Pieces, types and scores from ``tokenizer.model``, with the added tokens on top.

    Added tokens come from ``added_tokens.json`` and ``tokenizer_config.json`` (Phi-3's
    converter also reads ``tokenizer.json``'s, and trusts only their ``special`` flag).
    """
    from sentencepiece import SentencePieceProcessor

    processor = SentencePieceProcessor()
    processor.LoadFromFile(str(model_dir / "tokenizer.model"))
    tokens: list[str | bytes] = [f"[PAD{i}]".encode() for i in range(vocab_size)]
    scores = [-10000.0] * vocab_size
    types = [int(gguf.TokenType.UNUSED)] * vocab_size
    for i in range(min(processor.vocab_size(), vocab_size)):
        kind = gguf.TokenType.NORMAL
        if processor.IsUnknown(i):
            kind = gguf.TokenType.UNKNOWN
        elif processor.IsControl(i):
            kind = gguf.TokenType.CONTROL
        elif processor.IsUnused(i):
            kind = gguf.TokenType.UNUSED
        elif processor.IsByte(i):
            kind = gguf.TokenType.BYTE
        tokens[i], scores[i] = processor.IdToPiece(i).encode(), processor.GetScore(i)
        types[i] = int(kind)

    def added(i: int, text: str, kind: int) -> None:
        if i < vocab_size:
            tokens[i], scores[i], types[i] = text.encode(), -1000.0, int(kind)

    for text, i in _read_json(model_dir / "added_tokens.json").items():
        added(int(i), text, gguf.TokenType.USER_DEFINED)
    config = _read_json(model_dir / "tokenizer_config.json")
    for i, data in (config.get("added_tokens_decoder") or {}).items():
        added(int(i), *added_token(data["content"], bool(data.get("special")),
                                   trust_flag=tokenizer_json_last))
    if tokenizer_json_last:
        for data in _read_json(model_dir / "tokenizer.json").get("added_tokens", []):
            added(int(data["id"]), *added_token(data["content"], bool(data.get("special")),
                                                trust_flag=True))
    return tokens, types, scores


def _sentencepiece_json(model_dir: Path) -> tuple[list[str | bytes], list[int], list[float]]:
    """A SentencePiece tokenizer known only from tokenizer.json (gguf-py reads it)."""
    try:
        vocab = gguf.LlamaHfVocab(model_dir)
    except (TypeError, ValueError, KeyError, FileNotFoundError) as error:
        raise UserError(
            f"{model_dir / 'tokenizer.json'}: cannot read this SentencePiece-style tokenizer "
            f"for llama.cpp ({error}); keep the base model's tokenizer.model next to it"
        ) from error
    tokens, scores, types = [], [], []
    for text, score, kind in vocab.all_tokens():
        tokens.append(text)
        scores.append(score)
        types.append(int(kind))
    return tokens, types, scores


def _gemma4(model_dir: Path, visible: frozenset[str]
            ) -> tuple[list[str | bytes], list[int], list[float]]:
    """Gemma 4's vocabulary (llama.cpp's ``gemma4`` tokenizer: SentencePiece-style pieces
    merged by BPE ranks): as tokenizer.json has it, with the chat markers llama.cpp must
    render as text (channels, tool calls) typed USER_DEFINED, as the converter types them."""
    tokens, types, scores = _sentencepiece_json(model_dir)
    user = int(gguf.TokenType.USER_DEFINED)
    types = [user if _text(token) in visible else kind for token, kind in zip(tokens, types,
                                                                              strict=True)]
    return tokens, types, scores


def _text(token: str | bytes) -> str:
    return token.decode("utf-8", errors="replace") if isinstance(token, bytes) else token


def _refuse_repeated(tokens: list[str | bytes], where: Path) -> None:
    """llama.cpp asserts that every token's text is distinct (``id_to_token.size() ==
    token_to_id.size()``) and aborts loading the file: refuse such a vocabulary here
    (bytes that are not UTF-8, decoded as U+FFFD, can make one)."""
    counts = Counter(tokens)
    repeated = {t: n for t, n in counts.items() if n > 1}
    if repeated:
        text, times = next(iter(repeated.items()))
        raise UserError(f"{where}: {len(repeated)} token text(s) stand for several ids "
                        f"({_text(text)!r} for {times}); llama.cpp needs distinct tokens and "
                        f"would abort loading the file. Convert with llama.cpp: {CONVERT}")


def read_vocab(model_dir: Path, family: Family) -> GgufVocab:
    """The tokenizer of ``model_dir`` sized to the model's ``vocab_size``."""
    vocab_size = family.vocab_size
    tokenizer_json = model_dir / "tokenizer.json"
    tokenizer = _read_json(tokenizer_json)
    scores: list[float] | None
    pre: str | None
    if family.tokenizer_model == "gemma4":
        tokens, types, scores = _gemma4(model_dir, family.visible_tokens)
        model, pre, spm = "gemma4", None, False
    elif (model_dir / "tokenizer.model").is_file():
        tokens, types, scores = _sentencepiece(model_dir, vocab_size,
                                               family.spm_added_from_tokenizer_json)
        model, pre, spm = "llama", "default", True
    elif not tokenizer:
        raise UserError(
            f"{tokenizer_json}: not found (nor tokenizer.model); the GGUF exporter needs "
            "the model's tokenizer files next to its weights"
        )
    elif is_sentencepiece_json(tokenizer):
        tokens, types, scores = _sentencepiece_json(model_dir)
        model, pre, spm = "llama", "default", True
    else:
        tokens, types, pre = _byte_level_bpe(model_dir, tokenizer, vocab_size)
        model, scores, spm = "gpt2", None, False
    _refuse_repeated(tokens, tokenizer_json)
    # gguf-py warns about any pair template other than BERT's (Llama 3's included); that
    # template only matters for sentence pairs, which llama.cpp never builds.
    vocab_logger = logging.getLogger("gguf.vocab")
    level = vocab_logger.level
    vocab_logger.setLevel(logging.ERROR)
    try:
        special = (gguf.SpecialVocab(model_dir, n_vocab=len(tokens)) if spm
                   else gguf.SpecialVocab(model_dir, load_merges=True))
    finally:
        vocab_logger.setLevel(level)
    added = {str(t["content"]): int(t["id"]) for t in tokenizer.get("added_tokens", [])}
    for kind, token_id in family.special_tokens(added).items():
        special.special_token_ids.setdefault(kind, token_id)  # as the converter: no override
    if not spm and not special.merges:
        raise UserError(f"{tokenizer_json}: the BPE tokenizer has no merges; cannot export it")
    if special.chat_template is None:
        raise UserError(
            f"{model_dir}: the tokenizer has no chat_template; llama.cpp would not know how to "
            "format conversations. Merge with a tokenizer that carries one"
        )
    if family.tokenizer_model == "gemma4":
        special.add_special_token["bos"] = True  # the converter sets it, whatever the files say
    space_prefix = family.add_space_prefix
    if family.reads_add_prefix_space:
        space_prefix = _read_json(model_dir / "tokenizer_config.json").get("add_prefix_space")
    return GgufVocab(model, pre, tokens, types, scores, special, space_prefix)
