"""The data's tokenizer is judged by what tokenizes, not by its class or files: a config
that declares another class than what loads (DeepSeek-R1-Distill-Qwen declares
LlamaTokenizerFast over a byte-level tokenizer.json) prepares data train accepts."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from llama_cpp_material import real_tokenizer
from transformers import AutoTokenizer

from lorapipe.config import ModelConfig
from lorapipe.model.pretrained import (
    load_tokenizer,
    save_tokenizer,
    tokenization_difference,
)


def _declared_as_llama(tmp_path: Path) -> Path:
    """Qwen2's real byte-level tokenizer under DeepSeek-R1-Distill-Qwen's config keys."""
    model = shutil.copytree(real_tokenizer("qwen2"), tmp_path / "distill")
    config_path = model / "tokenizer_config.json"
    config = json.loads(config_path.read_text())
    config.update(tokenizer_class="LlamaTokenizerFast", add_bos_token=True,
                  add_eos_token=False, legacy=True, bos_token="<|endoftext|>",
                  chat_template="{% for m in messages %}{{ m['content'] }}{% endfor %}")
    config_path.write_text(json.dumps(config))
    return model


def test_a_declared_class_that_differs_from_what_loads_prepares_data_train_accepts(
        tmp_path: Path) -> None:
    model = ModelConfig(name_or_path=str(_declared_as_llama(tmp_path)))
    loaded = load_tokenizer(model)
    assert type(loaded).__name__ != "LlamaTokenizerFast"  # transformers loads another class
    save_tokenizer(loaded, model, tmp_path / "prepared")  # what prepare keeps in data/
    prepared = AutoTokenizer.from_pretrained(tmp_path / "prepared")
    assert tokenization_difference(prepared, load_tokenizer(model)) is None


def test_another_vocabulary_or_pre_tokenizer_is_named() -> None:
    from tokenizers import pre_tokenizers

    qwen = AutoTokenizer.from_pretrained(real_tokenizer("qwen2"))
    llama = AutoTokenizer.from_pretrained(real_tokenizer("llama3"))
    assert tokenization_difference(qwen, llama) == "model"
    changed = AutoTokenizer.from_pretrained(real_tokenizer("qwen2"))
    changed.backend_tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    assert changed("a b")["input_ids"] != qwen("a b")["input_ids"]
    assert tokenization_difference(qwen, changed) == "pre_tokenizer"


def test_a_tokenizer_whose_class_the_model_type_picks_reloads_as_that_class(
        tmp_path: Path) -> None:
    """A Qwen3.5-MoE checkpoint declares Qwen2Tokenizer; transformers loads
    Qwen3_5Tokenizer for its model type (another pre-tokenizer). data/tokenizer/ has no
    config.json, so it is reloaded with the base's config: the same class, and train
    accepts the data prepare wrote (it refused it before, whatever prepare did)."""
    from transformers import AutoConfig

    from lorapipe.model.pretrained import load_saved_tokenizer

    model_dir = shutil.copytree(real_tokenizer("qwen3"), tmp_path / "qwen35moe")
    AutoConfig.for_model("qwen3_5_moe_text", vocab_size=256).save_pretrained(model_dir)
    model = ModelConfig(name_or_path=str(model_dir))
    loaded = load_tokenizer(model)
    declared = json.loads((model_dir / "tokenizer_config.json").read_text())["tokenizer_class"]
    assert type(loaded).__name__ != declared  # the model type decided
    save_tokenizer(loaded, model, tmp_path / "prepared")
    assert tokenization_difference(AutoTokenizer.from_pretrained(tmp_path / "prepared"),
                                   loaded) == "pre_tokenizer"  # alone, the files disagree
    prepared = load_saved_tokenizer(tmp_path / "prepared", model)
    assert type(prepared) is type(loaded)
    assert tokenization_difference(prepared, loaded) is None
