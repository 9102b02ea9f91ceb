"""Target detection on tiny-llama and a locally built GPT-2, and checked explicit names."""

from __future__ import annotations

import pytest
from transformers import AutoModelForCausalLM, GPT2Config, GPT2LMHeadModel

from lorapipe.errors import ConfigError
from lorapipe.model import select_targets
from lorapipe.models import resolve_model_path


@pytest.fixture(scope="module")
def llama():
    return AutoModelForCausalLM.from_pretrained(resolve_model_path("tiny-llama"))


@pytest.fixture(scope="module")
def gpt2():
    return GPT2LMHeadModel(GPT2Config(n_embd=32, n_layer=2, n_head=2, vocab_size=128,
                                      n_positions=64))


@pytest.mark.parametrize(("preset", "modules"), [
    ("all", ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]),
    ("attention", ["q_proj", "k_proj", "v_proj", "o_proj"]),
    ("mlp", ["gate_proj", "up_proj", "down_proj"]),
])
def test_llama_presets(llama, make_config, registry, preset: str, modules: list[str]) -> None:
    config = make_config(adapter={"target_detector": {"name": "llama", "preset": preset}})
    chosen = select_targets(llama, config, registry)
    assert chosen.modules == modules and chosen.detector == "llama"
    assert preset in chosen.reason


def test_detectors_are_asked_in_priority_order(llama, gpt2, make_config, registry) -> None:
    config = make_config()
    assert select_targets(llama, config, registry).detector == "llama"
    chosen = select_targets(gpt2, config, registry)  # llama declines; a later one answers
    assert chosen.detector != "llama" and "c_attn" in chosen.modules


def test_all_linear_fallback_on_gpt2(gpt2, make_config, registry) -> None:
    chosen = select_targets(gpt2, make_config(adapter={"target_detector": "all_linear"}),
                            registry)
    assert sorted(chosen.modules) == ["c_attn", "c_fc", "c_proj"]  # not lm_head, not wte


def test_llama_detector_refuses_other_layouts(gpt2, make_config, registry) -> None:
    config = make_config(adapter={"target_detector": "llama"})
    with pytest.raises(ConfigError, match="does not recognise this gpt2 model") as err:
        select_targets(gpt2, config, registry)
    assert err.value.field == "adapter.target_detector"


def test_explicit_names_are_checked(llama, make_config, registry) -> None:
    chosen = select_targets(llama, make_config(adapter={"target_modules": ["q_proj", "lm_head"]}),
                            registry)
    assert chosen.modules == ["q_proj", "lm_head"] and chosen.detector is None
    with pytest.raises(ConfigError) as err:
        select_targets(llama, make_config(adapter={"target_modules": ["q_proj", "qproj"]}),
                       registry)
    assert err.value.field == "adapter.target_modules"
    assert "'qproj' matches no adaptable layer" in str(err.value)
    assert "Candidates: embed_tokens, q_proj, k_proj" in str(err.value)
