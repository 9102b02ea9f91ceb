"""``from_pretrained`` with the user's mistakes turned into one clear line; the run's
tokenizer and pad id.

Imports only transformers' tokenizer side: the ``prepare`` stage uses it and must not pay
for peft and bitsandbytes (seconds).
"""

from __future__ import annotations

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
