"""Target detection on tiny-llama and a locally built GPT-2, and checked explicit names."""

from __future__ import annotations

import pytest
from transformers import AutoModelForCausalLM, GPT2Config, GPT2LMHeadModel

from lorapipe.errors import ConfigError
from lorapipe.model.source import resolve_model_path
from lorapipe.model.targets import select_targets


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
def test_llama_presets(llama, make_ctx, preset: str, modules: list[str]) -> None:
    ctx = make_ctx(adapter={"target_detector": {"name": "llama", "preset": preset}})
    chosen = select_targets(llama, ctx.model_setup)
    assert chosen.modules == modules and chosen.detector == "llama"
    assert preset in chosen.reason


def test_detectors_are_asked_in_priority_order(llama, gpt2, make_ctx) -> None:
    ctx = make_ctx()
    assert select_targets(llama, ctx.model_setup).detector == "llama"
    chosen = select_targets(gpt2, ctx.model_setup)  # llama declines; a later one answers
    assert chosen.detector != "llama" and "c_attn" in chosen.modules


def test_all_linear_fallback_on_gpt2(gpt2, make_ctx) -> None:
    chosen = select_targets(gpt2, make_ctx(adapter={"target_detector": "all_linear"}).model_setup)
    assert sorted(chosen.modules) == ["c_attn", "c_fc", "c_proj"]  # not lm_head, not wte


def test_llama_detector_refuses_other_layouts(gpt2, make_ctx) -> None:
    ctx = make_ctx(adapter={"target_detector": "llama"})
    with pytest.raises(ConfigError, match="does not recognise this gpt2 model") as err:
        select_targets(gpt2, ctx.model_setup)
    assert err.value.field == "adapter.target_detector"


def test_explicit_names_are_checked(llama, make_ctx) -> None:
    ctx = make_ctx(adapter={"target_modules": ["q_proj", "lm_head"]})
    chosen = select_targets(llama, ctx.model_setup)
    assert chosen.modules == ["q_proj", "lm_head"] and chosen.detector is None
    with pytest.raises(ConfigError) as err:
        select_targets(llama, make_ctx(adapter={"target_modules": ["q_proj", "qproj"]}).model_setup)
    assert err.value.field == "adapter.target_modules"
    assert "'qproj' matches no adaptable layer" in str(err.value)
    assert "Candidates: embed_tokens, q_proj, k_proj" in str(err.value)


def test_detector_with_required_options_is_only_used_when_named(llama, tmp_path) -> None:
    """Asking every detector builds each with its defaults; one that cannot be built so
    is skipped there (not a crash), and works when the config names it with its options."""
    from lorapipe.config import validate_config
    from lorapipe.context import RunContext
    from lorapipe.plan import build_plan
    from lorapipe.plugin import Options, TargetDetector, TargetSelection, hookimpl
    from lorapipe.plugin_manager import build_plugin_manager
    from lorapipe.plugins.evaluators import perplexity
    from lorapipe.plugins.loaders import jsonl
    from lorapipe.plugins.objectives import sft
    from lorapipe.plugins.quantizers import none
    from lorapipe.plugins.targets import all_linear
    from lorapipe.plugins.templates import tokenizer
    from lorapipe.registry import Registry

    class SuffixOptions(Options):
        suffix: str  # required: no default

    class SuffixTargets(TargetDetector):
        name = "suffix"
        priority = 1
        Options = SuffixOptions

        def detect(self, model):  # noqa: ANN001, ANN202
            names = {n.rsplit(".", 1)[-1] for n, _ in model.named_modules()}
            return TargetSelection(sorted(n for n in names if n.endswith(self.options.suffix)),
                                   f"names ending in {self.options.suffix}")

    class SuffixPlugin:
        @hookimpl
        def lorapipe_register_target_detectors(self, register):  # noqa: ANN001, ANN202
            register(SuffixTargets)

    pm = build_plugin_manager(load_entry_points=False)
    for name, plugin in (("suffix", SuffixPlugin()), ("linear", all_linear), ("jsonl", jsonl),
                         ("none", none), ("tokenizer", tokenizer), ("ppl", perplexity),
                         ("sft", sft)):
        pm.register(plugin, name=name)
    registry = Registry(pm)
    data_file = tmp_path / "train.jsonl"
    data_file.write_text("")
    raw = {"model": {"name_or_path": "tiny-llama", "quantizer": "none"},
           "data": {"loader": {"name": "jsonl", "path": str(data_file)}},
           "output_dir": str(tmp_path / "run")}
    plan = build_plan(validate_config(raw), registry)
    assert [d.name for d in plan.detectors] == ["all_linear"]
    assert select_targets(llama, RunContext(plan).model_setup).detector == "all_linear"
    named = {**raw, "adapter": {"target_detector": {"name": "suffix", "suffix": "_proj"}}}
    chosen = select_targets(llama,
                            RunContext(build_plan(validate_config(named), registry)).model_setup)
    assert chosen.detector == "suffix" and "q_proj" in chosen.modules
