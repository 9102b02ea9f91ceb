"""The tokenizer as llama.cpp needs it: tokens, types, merges, special ids, template.

llama.cpp does not run the Hugging Face tokenizer; it re-implements a fixed set of them
and picks one by ``tokenizer.ggml.pre``. So the exporter must recognise which one the
model's tokenizer.json describes, from its structure, and refuse one llama.cpp would
split differently rather than write a file that silently tokenizes wrong. The merges,
special-token ids and chat template are read by gguf-py's ``SpecialVocab`` (the same code
llama.cpp's converter uses).
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import gguf

from lorapipe.errors import UserError
from lorapipe.export.gguf_model import CONVERT

# Llama 3's pre-tokenizer regex (tokenizer.json spells it exactly so); llama.cpp: "llama-bpe".
LLAMA3_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)

# Token texts llama.cpp treats as end of turn (it also detects them by text; writing the
# id makes the intent explicit for every reader of the file).
_EOT_TEXTS = ("<|eot_id|>", "<|im_end|>", "<|end|>", "<end_of_turn>")


@dataclass(frozen=True)
class GgufVocab:
    tokens: list[str]
    token_types: list[int]
    pre: str
    special: gguf.SpecialVocab
    eot_id: int | None


def _read_json(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise UserError(
            f"{path}: not found; the GGUF exporter needs a fast tokenizer (tokenizer.json). "
            "SentencePiece-only tokenizers (tokenizer.model) are not supported"
        )
    return json.loads(path.read_text(encoding="utf-8"))


def detect_pre_tokenizer(tokenizer: dict[str, Any], where: Path) -> str:
    """llama.cpp's name for the pre-tokenizer ``tokenizer.json`` describes, or refuse."""
    model = tokenizer.get("model") or {}
    if model.get("type") != "BPE":
        raise UserError(
            f"{where}: tokenizer model {model.get('type')!r} is not supported by the GGUF "
            "exporter; supported: byte-level BPE with Llama 3's pre-tokenizer"
        )
    if tokenizer.get("normalizer"):
        raise UserError(
            f"{where}: this is a SentencePiece-style tokenizer (it rewrites text before "
            "splitting it: spaces to '▁' and the like); the GGUF exporter writes byte-level "
            f"BPE tokenizers (Llama 3's) only. Remove it from export.exporters and convert "
            f"with llama.cpp after the run: {CONVERT}"
        )
    pre = tokenizer.get("pre_tokenizer") or {}
    steps = pre.get("pretokenizers", []) if pre.get("type") == "Sequence" else [pre]
    kinds = [step.get("type") for step in steps]
    if (
        kinds == ["Split", "ByteLevel"]
        and steps[0].get("pattern", {}).get("Regex") == LLAMA3_SPLIT
        and steps[0].get("behavior") == "Isolated"
        and not steps[0].get("invert")
        and not steps[1].get("use_regex", True)
        and not steps[1].get("add_prefix_space", False)
    ):
        return "llama-bpe"
    raise UserError(
        f"{where}: pre-tokenizer {' + '.join(str(k) for k in kinds) or 'none'} is not one the "
        "GGUF exporter can map to llama.cpp; supported: Llama 3's regex split + byte-level "
        "(llama-bpe)"
    )


def read_vocab(model_dir: Path, vocab_size: int) -> GgufVocab:
    """Tokens padded to the model's ``vocab_size``, typed as llama.cpp expects."""
    where = model_dir / "tokenizer.json"
    tokenizer = _read_json(where)
    pre = detect_pre_tokenizer(tokenizer, where)
    by_id: dict[int, tuple[str, int]] = {
        i: (text, gguf.TokenType.NORMAL) for text, i in tokenizer["model"]["vocab"].items()
    }
    for added in tokenizer.get("added_tokens", []):
        # llama.cpp splits special tokens out of text itself when they are CONTROL.
        kind = gguf.TokenType.CONTROL if added.get("special") else gguf.TokenType.USER_DEFINED
        by_id[int(added["id"])] = (added["content"], kind)
    if by_id and max(by_id) >= vocab_size:
        raise UserError(
            f"{where}: token id {max(by_id)} does not fit the model's vocab_size {vocab_size} "
            "(config.json); resize the embeddings when adding tokens"
        )
    tokens, types = [], []
    for i in range(vocab_size):
        # Rows of the embedding no token uses (vocab padded for speed) get placeholders.
        text, kind = by_id.get(i, (f"[PAD{i}]", gguf.TokenType.UNUSED))
        tokens.append(text)
        types.append(int(kind))
    # gguf-py warns about any pair template other than BERT's (Llama 3's included); that
    # template only matters for sentence pairs, which llama.cpp never builds.
    vocab_logger = logging.getLogger("gguf.vocab")
    level = vocab_logger.level
    vocab_logger.setLevel(logging.ERROR)
    try:
        special = gguf.SpecialVocab(model_dir, load_merges=True, n_vocab=vocab_size)
    finally:
        vocab_logger.setLevel(level)
    if not special.merges:
        raise UserError(f"{where}: the BPE tokenizer has no merges; cannot export it")
    if special.chat_template is None:
        raise UserError(
            f"{model_dir}: the tokenizer has no chat_template; llama.cpp would not know how to "
            "format conversations. Merge with a tokenizer that carries one"
        )
    texts = {text: i for i, (text, _) in by_id.items()}
    eot_id = next((texts[t] for t in _EOT_TEXTS if t in texts), None)
    return GgufVocab(tokens, types, pre, special, eot_id)
