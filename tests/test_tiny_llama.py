"""The built-in tiny-llama: deterministic, loadable by plain transformers, Llama-3-like."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from lorapipe.model.source import (
    TINY_LLAMA,
    build_tiny_llama,
    ensure_tiny_llama,
    resolve_model_path,
)

BOS, EOS, PAD = "<|begin_of_text|>", "<|end_of_text|>", "<|pad|>"
START_HEADER, END_HEADER, EOT = "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("tiny") / "model"
    build_tiny_llama(out)
    return out


@pytest.fixture(scope="module")
def tokenizer(model_dir: Path):
    return AutoTokenizer.from_pretrained(model_dir)


def _files(directory: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(directory.iterdir())}


def test_same_seed_gives_byte_identical_files(model_dir: Path, tmp_path: Path) -> None:
    build_tiny_llama(tmp_path / "again")
    first, second = _files(model_dir), _files(tmp_path / "again")
    assert {
        "config.json",
        "generation_config.json",
        "model.safetensors",
        "tokenizer.json",
        "tokenizer_config.json",
    } <= set(first)
    assert first.keys() == second.keys()
    for name in first:
        assert first[name] == second[name], f"{name} differs between two builds"


def test_other_seed_changes_weights_only(model_dir: Path, tmp_path: Path) -> None:
    build_tiny_llama(tmp_path / "seed1", seed=1)
    base, other = _files(model_dir), _files(tmp_path / "seed1")
    assert base["model.safetensors"] != other["model.safetensors"]
    assert base["tokenizer.json"] == other["tokenizer.json"]


def test_loads_with_plain_transformers_and_runs(model_dir: Path, tokenizer) -> None:
    model = AutoModelForCausalLM.from_pretrained(model_dir)
    config = model.config
    assert config.model_type == "llama"
    assert (config.hidden_size, config.intermediate_size, config.num_hidden_layers) == (128, 256, 4)
    assert (config.num_attention_heads, config.num_key_value_heads) == (4, 2)
    assert config.vocab_size == len(tokenizer) == 2048
    assert config.vocab_size % 32 == 0
    assert not config.tie_word_embeddings
    assert model.dtype == torch.float32
    assert config.bos_token_id == tokenizer.bos_token_id == tokenizer.convert_tokens_to_ids(BOS)
    assert config.eos_token_id == tokenizer.eos_token_id == tokenizer.convert_tokens_to_ids(EOS)
    assert config.pad_token_id == tokenizer.pad_token_id == tokenizer.convert_tokens_to_ids(PAD)
    assert set(model.generation_config.eos_token_id) == {
        tokenizer.convert_tokens_to_ids(EOT),
        tokenizer.convert_tokens_to_ids(EOS),
    }

    batch = tokenizer("The quick brown fox", return_tensors="pt")
    with torch.no_grad():
        logits = model(**batch).logits
    assert logits.shape == (1, batch["input_ids"].shape[1], 2048)
    assert torch.isfinite(logits).all()


def test_special_tokens_are_single_ids(tokenizer) -> None:
    for token in (BOS, EOS, PAD, START_HEADER, END_HEADER, EOT):
        ids = tokenizer.encode(token, add_special_tokens=False)
        assert ids == [tokenizer.convert_tokens_to_ids(token)]
    assert tokenizer("hi")["input_ids"][0] == tokenizer.bos_token_id


@pytest.mark.parametrize(
    "text",
    [
        "Hello, world! How are you today?",
        "0 7 42 123 4567 3.14159 2024-01-15 $19.99",
        "Punctuation: (a) [b] {c} <d> 'e' \"f\" - -- ... ; ! ? @ # % ^ & * ~ ` \\ |",
        "café naïve Zürich 東京 Ελλάδα 🙂 ✓",
        "  leading and  double spaces\n\ttab\r\nwindows line\n\n\nend  ",
        "def f(x):\n    return x * 2\n",
    ],
)
def test_encode_decode_round_trips(tokenizer, text: str) -> None:
    ids = tokenizer(text)["input_ids"]
    assert ids[0] == tokenizer.bos_token_id
    assert ids.count(tokenizer.bos_token_id) == 1
    assert tokenizer.decode(ids[1:]) == text
    assert tokenizer.decode(ids, skip_special_tokens=True) == text


def test_chat_template_is_llama3_style(tokenizer) -> None:
    messages = [
        {"role": "system", "content": "Be brief. "},
        {"role": "user", "content": "  What is 2 + 3?"},
        {"role": "assistant", "content": "Five."},
    ]
    text = tokenizer.apply_chat_template(messages, tokenize=False)
    assert text == (
        f"{BOS}"
        f"{START_HEADER}system{END_HEADER}\n\nBe brief.{EOT}"
        f"{START_HEADER}user{END_HEADER}\n\nWhat is 2 + 3?{EOT}"
        f"{START_HEADER}assistant{END_HEADER}\n\nFive.{EOT}"
    )

    ids = tokenizer.apply_chat_template(messages, tokenize=True, return_dict=False)
    bos, eot = tokenizer.bos_token_id, tokenizer.convert_tokens_to_ids(EOT)
    # The template writes BOS as text; tokenizing it must not add a second one.
    assert ids[0] == bos and ids.count(bos) == 1
    assert ids.count(eot) == len(messages) and ids[-1] == eot
    assert tokenizer.decode(ids) == text

    prompt = tokenizer.apply_chat_template(
        messages[:2], tokenize=True, add_generation_prompt=True, return_dict=False
    )
    assert prompt.count(bos) == 1
    assert tokenizer.decode(prompt).endswith(f"{EOT}{START_HEADER}assistant{END_HEADER}\n\n")


def test_no_default_system_prompt(tokenizer) -> None:
    text = tokenizer.apply_chat_template([{"role": "user", "content": "Hi"}], tokenize=False)
    assert text == f"{BOS}{START_HEADER}user{END_HEADER}\n\nHi{EOT}"


def test_ensure_builds_once_then_reuses_cache(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("LORAPIPE_CACHE", str(tmp_path))
    path = ensure_tiny_llama()
    assert path == tmp_path / "tiny-llama-v3"
    mtimes = {p.name: p.stat().st_mtime_ns for p in path.iterdir()}
    assert "model.safetensors" in mtimes

    assert ensure_tiny_llama() == path
    assert {p.name: p.stat().st_mtime_ns for p in path.iterdir()} == mtimes
    assert resolve_model_path(TINY_LLAMA) == str(path)
    assert [p.name for p in tmp_path.iterdir()] == ["tiny-llama-v3"], "staging dir left behind"


def test_explicit_cache_dir(tmp_path: Path, model_dir: Path) -> None:
    path = ensure_tiny_llama(tmp_path / "cache")
    assert path == tmp_path / "cache" / "tiny-llama-v3"
    assert _files(path) == _files(model_dir)


def test_resolve_passes_other_names_through() -> None:
    for name in ("meta-llama/Llama-3.2-1B", "/models/my-llama", "./tiny-llama", "Tiny-Llama"):
        assert resolve_model_path(name) == name


def test_racing_builders_share_one_cache(tmp_path: Path, model_dir: Path) -> None:
    # Threads stand in for processes (same rename semantics, no 5 s import per
    # process): both miss the cache, both build, the loser must use the winner's.
    start = threading.Barrier(2)

    def build() -> Path:
        start.wait()
        return ensure_tiny_llama(tmp_path)

    with ThreadPoolExecutor(max_workers=2) as pool:
        results = list(pool.map(lambda _: build(), range(2)))
    target = tmp_path / "tiny-llama-v3"
    assert results == [target, target]
    assert [p.name for p in tmp_path.iterdir()] == ["tiny-llama-v3"], "staging dir left behind"
    built, reference = _files(target), _files(model_dir)
    assert built.keys() == reference.keys()
    # Only the tokenizer is compared: threads share torch's global RNG, so
    # weights built concurrently in one process need not match the seed.
    assert built["tokenizer.json"] == reference["tokenizer.json"]
    AutoModelForCausalLM.from_pretrained(target)
