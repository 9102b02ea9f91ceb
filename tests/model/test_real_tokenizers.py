"""The 2026 families' real tokenizers (``llama_cpp_material.real_tokenizer``) tokenize as
llama.cpp does: on llama.cpp's own tokenizer tests (``test-tokenizer-0``: the inputs of
``ggml-vocab-X.gguf.inp`` and the ids of ``.out``, written from the family's Hugging Face
tokenizer), as llama.cpp itself tokenizes them from the same vocab file, and on a chat
their own template renders, special tokens included."""

from __future__ import annotations

import unicodedata
from collections.abc import Iterator
from functools import cache
from pathlib import Path
from typing import Any

import pytest
from llama_cpp_material import TOKENIZERS, llama_cpp_tree, real_tokenizer

NAMES = ("qwen35", "gemma4", "command-r", "deepseek")

# The cases where ours differs from llama.cpp, by index in the .inp file. Qwen 3.5's
# class in transformers normalizes to NFC (the class rebuilds its normalizer whatever
# tokenizer.json says, so a real Qwen 3.5 repository loads the same way); llama.cpp
# normalizes nothing. The three inputs spelled with combining marks ('é' as e + U+0301,
# 'résumé' likewise, 'à' as a + U+0300 many times) are composed first by us, not by
# llama.cpp; on every other input NFC changes nothing.
DIFFER = {"qwen35": {46, 47, 48}}

SEPARATOR = "\n__ggml_vocab_test__\n"

CHAT = [{"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Hi there, 2+2? Say it in\n two lines."},
        {"role": "assistant", "content": "4.\n\nÜnïcödé ™ ø 😀 — done."},
        {"role": "user", "content": "Thanks!"}]


def vocab_file(name: str) -> Path:
    return llama_cpp_tree() / "models" / f"ggml-vocab-{TOKENIZERS[name][0]}.gguf"


def read_cases(vocab: Path) -> list[tuple[str, list[int]]]:
    """``(input, expected ids)`` as test-tokenizer-0.cpp reads them: the .inp text split on
    the separator (a trailing one ends the last case), one line of ids per case in .out."""
    raw = Path(f"{vocab}.inp").read_bytes().decode("utf-8")
    lines = Path(f"{vocab}.out").read_bytes().decode("utf-8").splitlines()
    inputs, pos = [], 0
    while pos < len(raw):
        end = raw.find(SEPARATOR, pos)
        if end < 0:
            inputs.append(raw[pos:])
            break
        inputs.append(raw[pos:end])
        pos = end + len(SEPARATOR)
    assert len(inputs) == len(lines) > 40, vocab
    return [(text, [int(t) for t in line.split()])
            for text, line in zip(inputs, lines, strict=True)]


@cache
def ours(name: str) -> Any:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(real_tokenizer(name))


@pytest.fixture(scope="module")
def llama_cpp_vocab() -> Iterator[Any]:
    """``vocab(name)``: llama.cpp's tokenizer for the vocab file (vocab_only), kept open."""
    import llama_cpp

    opened: dict[str, Any] = {}

    def vocab(name: str) -> Any:
        if name not in opened:
            opened[name] = llama_cpp.Llama(str(vocab_file(name)), vocab_only=True,
                                           verbose=False)
        return opened[name]

    yield vocab
    for llm in opened.values():
        llm.close()


@pytest.mark.parametrize("name", NAMES)
def test_llama_cpp_test_cases(name: str) -> None:
    tokenizer = ours(name)
    cases = read_cases(vocab_file(name))
    differ = {i for i, (text, ids) in enumerate(cases)
              if tokenizer.encode(text, add_special_tokens=False) != ids}
    assert differ == DIFFER.get(name, set())


def test_qwen35_differs_only_by_composing_first(llama_cpp_vocab: Any) -> None:
    """The differing Qwen 3.5 cases are exactly the inputs NFC changes, and on the composed
    text ours and llama.cpp agree again."""
    tokenizer, cpp = ours("qwen35"), llama_cpp_vocab("qwen35")
    cases = read_cases(vocab_file("qwen35"))
    decomposed = {i for i, (text, _) in enumerate(cases)
                  if unicodedata.normalize("NFC", text) != text}
    assert decomposed == DIFFER["qwen35"]
    for i in decomposed:
        composed = unicodedata.normalize("NFC", cases[i][0])
        assert tokenizer.encode(cases[i][0], add_special_tokens=False) == cpp.tokenize(
            composed.encode(), add_bos=False, special=False)


@pytest.mark.parametrize("name", NAMES)
def test_llama_cpp_agrees(name: str, llama_cpp_vocab: Any) -> None:
    """llama.cpp itself, on the same vocab file, passes its test and tokenizes every case
    as ours does (but the differences above)."""
    tokenizer, cpp = ours(name), llama_cpp_vocab(name)
    differ = set()
    for i, (text, ids) in enumerate(read_cases(vocab_file(name))):
        theirs = cpp.tokenize(text.encode(), add_bos=False, special=False)
        assert theirs == ids, i
        if tokenizer.encode(text, add_special_tokens=False) != theirs:
            differ.add(i)
    assert differ == DIFFER.get(name, set())


@pytest.mark.parametrize("name", NAMES)
def test_the_vocabulary_is_the_files(name: str, llama_cpp_vocab: Any) -> None:
    """Every id in place (transformers' reader alone drops 43 of Command R's and adds
    DeepSeek's BOS and EOS a second time), and the same BOS and EOS."""
    tokenizer, cpp = ours(name), llama_cpp_vocab(name)
    assert len(tokenizer) == cpp.n_vocab()
    assert (tokenizer.bos_token_id, tokenizer.eos_token_id) == (cpp.token_bos(), cpp.token_eos())


@pytest.mark.parametrize("name", NAMES)
def test_the_chat_template_renders_and_tokenizes_as_llama_cpp(
        name: str, llama_cpp_vocab: Any) -> None:
    """The attached template renders a chat with a system prompt, and the rendering's ids
    (special tokens parsed, as llama.cpp does for a prompt) are llama.cpp's."""
    tokenizer, cpp = ours(name), llama_cpp_vocab(name)
    text = tokenizer.apply_chat_template(CHAT, tokenize=False, add_generation_prompt=True)
    assert all(m["content"] in text for m in CHAT)
    ids = tokenizer.encode(text, add_special_tokens=False)
    assert ids == cpp.tokenize(text.encode(), add_bos=False, special=True)
    specials = {i for i, token in tokenizer.added_tokens_decoder.items() if token.special}
    assert specials & set(ids)  # the template's markers are whole tokens, not text
    rendered = tokenizer.apply_chat_template(CHAT, add_generation_prompt=True)["input_ids"]
    assert rendered == ids
