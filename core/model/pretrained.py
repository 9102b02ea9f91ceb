"""``from_pretrained`` with the user's mistakes turned into one clear line; the run's
tokenizer and pad id.

Imports only transformers' tokenizer side: the ``prepare`` stage uses it and must not pay
for peft and bitsandbytes (seconds).
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from transformers import AutoTokenizer
from transformers.tokenization_utils_base import PreTrainedTokenizerBase

from lorapipe.artifacts import RunPaths
from lorapipe.config import ModelConfig
from lorapipe.errors import ConfigError
from lorapipe.model.source import resolve_model_path


def load_tokenizer(model: ModelConfig) -> PreTrainedTokenizerBase:
    """The base model's own tokenizer, unchanged (the data stage decides padding)."""
    path = resolve_model_path(model.name_or_path)
    return load_pretrained(AutoTokenizer, path, {"trust_remote_code": model.trust_remote_code})


# Files a tokenizer may be made of. ``save_pretrained`` of a fast tokenizer writes only
# tokenizer.json and its config; tools that read the others (llama.cpp's converter reads
# SentencePiece's tokenizer.model, others vocab.json/merges.txt) need them kept.
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
                   "added_tokens.json", "tokenizer.model", "spiece.model",
                   "sentencepiece.bpe.model", "vocab.json", "merges.txt", "vocab.txt")


def save_tokenizer(tokenizer: PreTrainedTokenizerBase, model: ModelConfig, out_dir: Path) -> None:
    """``save_pretrained``, plus every tokenizer file of the base model it did not write,
    so ``out_dir`` reads like the base to every tool (what it wrote takes precedence: it
    holds the chat template the run trained with)."""
    tokenizer.save_pretrained(out_dir)
    base = Path(resolve_model_path(model.name_or_path))
    for name in TOKENIZER_FILES:
        if (base / name).is_file() and not (out_dir / name).exists():
            shutil.copy2(base / name, out_dir / name)


def prepared_tokenizer(paths: RunPaths, model: ModelConfig) -> PreTrainedTokenizerBase:
    """The tokenizer that produced the run's token ids (``data/tokenizer/``, chat template
    included), or the base model's when the data was not prepared in this run directory."""
    if paths.tokenizer.is_dir():
        return AutoTokenizer.from_pretrained(str(paths.tokenizer))
    return load_tokenizer(model)


def pad_token_id(tokenizer: PreTrainedTokenizerBase) -> int:
    """The id batches are padded with. Pad positions are masked out of attention and loss,
    so where the tokenizer defines no pad token (GPT-2 and other base models) any id will
    do: end-of-sequence, else 0."""
    for token_id in (tokenizer.pad_token_id, tokenizer.eos_token_id):
        if token_id is not None:
            return token_id
    return 0


def load_pretrained(auto: Any, path: str, kwargs: dict[str, Any]) -> Any:
    """``from_pretrained`` with the user's mistakes turned into one clear line."""
    try:
        return auto.from_pretrained(path, **kwargs)
    except OSError as err:
        raise ConfigError(
            "model.name_or_path",
            f"cannot load '{path}': {_first_line(err)}. Give a local Hugging Face model "
            "directory, a hub id, or tiny-llama",
        ) from None
    except ValueError as err:
        if "trust_remote_code" in str(err):
            raise ConfigError(
                "model.trust_remote_code",
                f"'{path}' ships its own model code; set model.trust_remote_code: true "
                "only if you trust its author",
            ) from None
        raise


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__
