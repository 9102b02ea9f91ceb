"""``from_pretrained`` with the user's mistakes turned into one clear line; the run's
tokenizer and pad id.

Every ``from_pretrained`` in lorapipe (and in its plugins, through ``lorapipe.plugin``)
goes through ``from_pretrained`` here, which always passes ``model.trust_remote_code``:
left out, transformers asks "[y/N]" on stdin before running a checkpoint's own code
(``auto_map`` and its ``.py`` files), so a piped ``y`` would run it.

Imports only transformers' tokenizer side: the ``prepare`` stage uses it and must not pay
for peft and bitsandbytes (seconds).
"""

from __future__ import annotations

import contextlib
import json
import shutil
from pathlib import Path
from typing import Any

from transformers import AutoTokenizer
from transformers.tokenization_utils_base import PreTrainedTokenizerBase

from lorapipe.artifacts import RunPaths
from lorapipe.atomic import atomic_write_json, atomic_write_text
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
                   "added_tokens.json", "chat_template.jinja", "tokenizer.model", "spiece.model",
                   "sentencepiece.bpe.model", "vocab.json", "merges.txt", "vocab.txt")


def save_tokenizer(tokenizer: PreTrainedTokenizerBase, model: ModelConfig, out_dir: Path) -> None:
    """The base model's tokenizer files, verbatim, with the run's chat template.

    transformers re-serialises what it saves (and may rewrite a normalizer or drop keys
    other tools read), so every tokenizer file the base had is copied over what it wrote:
    ``out_dir`` then reads exactly like the base to transformers, llama.cpp's converter
    and the rest. Only the chat template is the run's, written where the base keeps it
    (tokenizer_config.json's ``chat_template``, else chat_template.jinja).
    """
    tokenizer.save_pretrained(out_dir)
    base = Path(resolve_model_path(model.name_or_path))
    for name in TOKENIZER_FILES:
        if (base / name).is_file():
            shutil.copy2(base / name, out_dir / name)
    template = tokenizer.chat_template
    if not isinstance(template, str):
        return
    config_path = out_dir / "tokenizer_config.json"
    config = json.loads(config_path.read_text(encoding="utf-8")) if config_path.is_file() else {}
    if "chat_template" in config:  # a string, or a list of named templates
        if config["chat_template"] != template:
            atomic_write_json(config_path, {**config, "chat_template": template})
        return
    jinja = out_dir / "chat_template.jinja"
    if not jinja.is_file() or jinja.read_text(encoding="utf-8") != template:
        atomic_write_text(jinja, template)


def prepared_tokenizer(paths: RunPaths, model: ModelConfig) -> PreTrainedTokenizerBase:
    """The tokenizer that produced the run's token ids (``data/tokenizer/``, chat template
    included), or the base model's when the data was not prepared in this run directory."""
    if paths.tokenizer.is_dir():
        return load_saved_tokenizer(paths.tokenizer, model)
    return load_tokenizer(model)


def load_saved_tokenizer(directory: Path, model: ModelConfig) -> PreTrainedTokenizerBase:
    """A tokenizer saved by :func:`save_tokenizer`, loaded as the base model's is.

    transformers picks a tokenizer's class from the model's ``config.json`` before the
    ``tokenizer_class`` its files declare (a Qwen3.5 checkpoint declares Qwen2Tokenizer
    and loads Qwen3_5Tokenizer, whose pre-tokenizer also splits off combining marks), and
    ``directory`` has no config.json: the base's is given, so the class is the same.
    """
    from transformers import AutoConfig

    kwargs: dict[str, Any] = {}
    # no model config to be found (a hub id offline): the files decide alone
    with contextlib.suppress(OSError, ValueError):
        kwargs["config"] = from_pretrained(AutoConfig, resolve_model_path(model.name_or_path),
                                           trust_remote_code=model.trust_remote_code)
    return from_pretrained(AutoTokenizer, directory, trust_remote_code=model.trust_remote_code,
                           **kwargs)


def tokenization(tokenizer: PreTrainedTokenizerBase) -> dict[str, Any]:
    """What decides the ids a tokenizer gives: its vocabulary and merges, normalizer,
    pre-tokenizer, added tokens (as matched, not how they are flagged) and special tokens.
    Not its class or file layout, which ``save_pretrained`` and transformers' loading
    rewrite (a config declaring LlamaTokenizerFast over a byte-level tokenizer.json loads
    as TokenizersBackend)."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:  # a slow tokenizer: its vocabulary is what there is to compare
        return {"vocab": tokenizer.get_vocab(), "special": tokenizer.special_tokens_map}
    state = json.loads(backend.to_str())
    matching = ("id", "content", "single_word", "lstrip", "rstrip", "normalized")
    return {"model": state.get("model"), "normalizer": state.get("normalizer"),
            "pre_tokenizer": state.get("pre_tokenizer"),
            "added": [{k: t.get(k) for k in matching} for t in state.get("added_tokens", [])],
            "special": tokenizer.special_tokens_map}


def tokenization_difference(a: PreTrainedTokenizerBase,
                            b: PreTrainedTokenizerBase) -> str | None:
    """The first part of :func:`tokenization` in which ``a`` and ``b`` differ, or None."""
    first, second = tokenization(a), tokenization(b)
    return next((part for part in (*first, *second) if first.get(part) != second.get(part)),
                None)


def pad_token_id(tokenizer: PreTrainedTokenizerBase) -> int:
    """The id batches are padded with. Pad positions are masked out of attention and loss,
    so where the tokenizer defines no pad token (GPT-2 and other base models) any id will
    do: end-of-sequence, else 0."""
    for token_id in (tokenizer.pad_token_id, tokenizer.eos_token_id):
        if token_id is not None:
            return token_id
    return 0


def from_pretrained(auto: Any, path: str | Path, *, trust_remote_code: bool,
                    **kwargs: Any) -> Any:
    """``auto.from_pretrained(path, **kwargs)`` with ``trust_remote_code`` always given.

    Given as ``False``, transformers never prompts: a checkpoint that needs its own code
    (``auto_map`` with no built-in class) raises instead, and that becomes one line naming
    ``model.trust_remote_code``. ``True`` runs that code, as the user asked.
    """
    if not isinstance(trust_remote_code, bool):  # None would let transformers prompt
        raise TypeError(f"trust_remote_code must be True or False, not {trust_remote_code!r}")
    try:
        return auto.from_pretrained(str(path), trust_remote_code=trust_remote_code, **kwargs)
    except ValueError as err:
        if "trust_remote_code" in str(err):
            raise ConfigError(
                "model.trust_remote_code",
                f"'{path}' ships its own code, which lorapipe does not run; set "
                "model.trust_remote_code: true only if you trust its author",
            ) from None
        raise


def load_pretrained(auto: Any, path: str, kwargs: dict[str, Any]) -> Any:
    """The base model's ``from_pretrained`` (``kwargs`` hold ``trust_remote_code``), with
    a model that cannot be found or read turned into one line naming model.name_or_path."""
    try:
        return from_pretrained(auto, path, **kwargs)
    except OSError as err:
        raise ConfigError(
            "model.name_or_path",
            f"cannot load '{path}': {_first_line(err)}. Give a local Hugging Face model "
            "directory, a hub id, or tiny-llama",
        ) from None


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__
