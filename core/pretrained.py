"""``from_pretrained`` with the user's mistakes turned into one clear line, and the base
model's tokenizer.

Kept apart from ``lorapipe.model`` on purpose: importing that package loads peft and
bitsandbytes (seconds), and the ``prepare`` stage only needs the tokenizer.
"""

from __future__ import annotations

from typing import Any

from transformers import AutoTokenizer
from transformers.tokenization_utils_base import PreTrainedTokenizerBase

from lorapipe.config import PipelineConfig
from lorapipe.errors import ConfigError
from lorapipe.models import resolve_model_path


def load_tokenizer(config: PipelineConfig) -> PreTrainedTokenizerBase:
    """The base model's own tokenizer, unchanged (the data stage decides padding)."""
    trust = config.model.trust_remote_code
    path = resolve_model_path(config.model.name_or_path)
    return load_pretrained(AutoTokenizer, path, {"trust_remote_code": trust})


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
