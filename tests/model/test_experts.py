"""LoRA on mixture-of-experts models: transformers 5 stores experts as fused 3-D
parameters, which ``all_linear`` adapts by default (peft's ``target_parameters``) and the
report, the memory estimate, the nf4 preparation and the merge all account for.

Tiny random-weight models of the real config shapes (``tests/current_families.py``),
built weightless where only module names matter.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from current_families import FAMILIES, SHAPE
from peft import LoraConfig, PeftModel, get_peft_model
from transformers import AutoConfig, AutoModelForCausalLM

from lorapipe.errors import ConfigError
from lorapipe.merge.streaming import Architecture, merge_checkpoint
from lorapipe.model.adapters import build_trainable_model
from lorapipe.model.targets import not_adapted, select_targets

LLAMA = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
IDS = torch.tensor([[1, 5, 9, 17, 33, 2, 60, 7]])


def _config(name: str) -> AutoConfig:
    shape = FAMILIES[name]
    settings = {**SHAPE, **shape.config, "vocab_size": 300, "pad_token_id": 0,
                "bos_token_id": 1, "eos_token_id": 2}
    if shape.model_type == "gemma4_text":
        settings["vocab_size_per_layer_input"] = 300
    return AutoConfig.for_model(shape.model_type, **settings)


def _weightless(name: str) -> torch.nn.Module:
    with torch.device("meta"):
        return AutoModelForCausalLM.from_config(_config(name))


def _saved(name: str, directory: Path) -> Path:
    torch.manual_seed(0)
    AutoModelForCausalLM.from_config(_config(name), dtype=torch.float32).save_pretrained(directory)
    return directory


@pytest.mark.parametrize("name", list(FAMILIES))
def test_the_default_detector_adapts_every_linear_layer_and_the_experts(name: str,
                                                                        make_ctx) -> None:
    chosen = select_targets(_weightless(name), make_ctx().model_setup)
    shape = FAMILIES[name]
    llama_layout = sorted(shape.modules) == sorted(LLAMA) and not shape.parameters
    # elsewhere the Llama preset would miss layers: linear attention, per-layer inputs
    assert chosen.detector == ("llama" if llama_layout else "all_linear")
    assert sorted(chosen.modules) == sorted(FAMILIES[name].modules)
    assert sorted(chosen.parameters) == sorted(FAMILIES[name].parameters)


@pytest.mark.parametrize("name", ["qwen3_moe", "qwen3_5_moe", "llama4", "gemma4_moe",
                                  "granitemoehybrid"])
def test_routers_are_left_out_and_reported(name: str, make_ctx) -> None:
    model = _weightless(name)
    chosen = select_targets(model, make_ctx().model_setup)
    assert not {"router", "gate", "shared_expert_gate", "proj"} & set(chosen.modules)
    reasons = {entry["name"]: entry["reason"] for entry in not_adapted(model, chosen)}
    routers = [n for n, reason in reasons.items() if reason.startswith("router")]
    assert routers, reasons
    assert reasons["lm_head"].startswith("vocabulary")


def test_convolutions_of_hybrid_layers_are_reported_with_why(make_ctx) -> None:
    for name in ("qwen3_5", "lfm2", "granitemoehybrid"):
        model = _weightless(name)
        entries = not_adapted(model, select_targets(model, make_ctx().model_setup))
        conv = [e for e in entries if e["reason"].startswith("Conv1d")]
        assert conv and all(e["parameters"] > 0 for e in conv), (name, entries)


def test_experts_false_leaves_the_experts_out_and_says_so(make_ctx) -> None:
    model = _weightless("qwen3_moe")
    ctx = make_ctx(adapter={"target_detector": {"name": "all_linear", "experts": False}})
    chosen = select_targets(model, ctx.model_setup)
    assert chosen.parameters == [] and "q_proj" in chosen.modules
    left = {e["name"]: e for e in not_adapted(model, chosen)}
    assert left["experts.gate_up_proj"]["reason"].startswith("fused expert weights")
    assert left["experts.gate_up_proj"]["parameters"] == 2 * 4 * 64 * 64  # layers × stack


def _adapted_by_peft(model: torch.nn.Module, chosen, r: int = 4) -> tuple[set, set, dict]:
    """What peft itself adapts for these targets: linear layer names, expert parameter
    names, and every LoRA rank (per expert for a stack) it built."""
    from peft.tuners.lora import LoraLayer, ParamWrapper

    peft_model = get_peft_model(model, lora_config_for(chosen, r))
    linear, experts, ranks = set(), set(), {}
    for name, module in peft_model.base_model.model.named_modules():
        if isinstance(module, ParamWrapper):
            # peft nests one wrapper per parameter of a module: experts.base_layer.…
            experts.add(f"{name}.{module.parameter_name}".replace(".base_layer", ""))
            ranks[name] = module.r["default"]
        elif isinstance(module, LoraLayer):
            linear.add(name)
            ranks[name] = module.r["default"]
    return linear, experts, ranks


def lora_config_for(chosen, r: int) -> LoraConfig:
    return LoraConfig(r=r, lora_alpha=2 * r, target_modules=chosen.modules or None,
                      target_parameters=chosen.parameters or None)


@pytest.mark.parametrize("experts", [True, False])
def test_deepseek_dense_mlps_and_experts_get_exactly_what_was_chosen(make_ctx,
                                                                     experts: bool) -> None:
    """DeepSeek-V3 names its dense and shared-expert MLPs gate_proj/up_proj/down_proj,
    which peft also reads as the routed experts' transformers-4 names: peft 0.21 then
    dropped the linear layers, 0.22 adapts the experts too (with experts: false as well)
    at twice the rank. The targets are named so that peft, the judge here, adapts every
    linear layer and exactly the chosen experts, all at rank r."""
    from lorapipe.model.targets import adaptable_modules, expert_parameters

    model = _weightless("deepseek_v3")
    ctx = make_ctx(adapter={"target_detector": {"name": "all_linear", "experts": experts}})
    chosen = select_targets(model, ctx.model_setup)
    assert not chosen.withheld
    linear, adapted_experts, ranks = _adapted_by_peft(_weightless("deepseek_v3"), chosen)
    assert linear == set(adaptable_modules(model))
    assert any(".mlp.gate_proj" in n for n in linear)
    assert any(".shared_experts.down_proj" in n for n in linear)
    assert adapted_experts == (set(expert_parameters(model)) if experts else set())
    assert set(ranks.values()) == {4}


def test_explicit_mlp_names_on_deepseek_adapt_those_layers_only(make_ctx) -> None:
    from lorapipe.model.targets import expert_parameters

    ctx = make_ctx(adapter={"target_modules": ["q_a_proj", "gate_proj", "up_proj"]})
    model = _weightless("deepseek_v3")
    chosen = select_targets(model, ctx.model_setup)
    linear, adapted_experts, _ = _adapted_by_peft(_weightless("deepseek_v3"), chosen)
    assert {n.rsplit(".", 1)[-1] for n in linear} == {"q_a_proj", "gate_proj", "up_proj"}
    assert not adapted_experts and expert_parameters(model)


def test_explicit_expert_names_are_checked(make_ctx) -> None:
    model = _weightless("qwen3_moe")
    ctx = make_ctx(adapter={"target_modules": ["q_proj"],
                            "target_parameters": ["experts.down_proj"]})
    chosen = select_targets(model, ctx.model_setup)
    assert chosen.parameters == ["experts.down_proj"] and chosen.detector is None
    bad = make_ctx(adapter={"target_parameters": ["experts.up_proj"]})
    with pytest.raises(ConfigError, match="experts.gate_up_proj") as err:
        select_targets(model, bad.model_setup)
    assert err.value.field == "adapter.target_parameters"


def test_dora_on_experts_is_refused_before_loading(make_ctx) -> None:
    with pytest.raises(ConfigError, match="leave the experts out") as err:
        select_targets(_weightless("qwen3_moe"), make_ctx(adapter={"use_dora": True}).model_setup)
    assert err.value.field == "adapter.use_dora"


@pytest.mark.parametrize("name", ["qwen3_moe", "gpt_oss", "deepseek_v3"])
def test_estimate_counts_expert_adapters_exactly(name: str, make_ctx, tmp_path: Path) -> None:
    """The estimate's adapter count (from the weightless model) is what peft injects, and
    the expert stacks are weighed unquantized under nf4."""
    model_dir = _saved(name, tmp_path / "model")
    ctx = make_ctx(model={"name_or_path": str(model_dir), "quantizer": "nf4"},
                   adapter={"r": 4})
    model, report = build_trainable_model(ctx.model_setup, report_path=ctx.paths.model_report,
                                          gradient_checkpointing=False)
    estimate = report["memory"]["estimate"]
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    assert estimate["params"]["adapter"] == trainable == report["parameters"]["trainable"]
    experts = sum(p.numel() for n, p in model.named_parameters()
                  if p.dim() == 3 and "lora_" not in n and "conv" not in n)
    assert estimate["params"]["experts"] == experts > 0
    per_target = report["parameters"]["per_target"]
    assert sum(e["adapter_params"] for e in per_target.values()) == trainable
    assert "experts" in per_target["experts.down_proj"]["base_layer"]


def test_linear_layers_keep_dropout_where_experts_cannot_have_it(make_ctx,
                                                                  tmp_path: Path) -> None:
    """peft's ParamWrapper refuses lora_dropout != 0 (a DeepSeek-V3 run died on it): the
    config saved says 0, the linear layers still drop out at adapter.dropout."""
    from peft.tuners.lora import LoraLayer, ParamWrapper

    ctx = make_ctx(model={"name_or_path": str(_saved("deepseek_v3", tmp_path / "m")),
                          "quantizer": "none"}, adapter={"dropout": 0.1})
    model, _ = build_trainable_model(ctx.model_setup, report_path=ctx.paths.model_report,
                                     gradient_checkpointing=False)
    layers = [m for m in model.modules() if isinstance(m, LoraLayer)]
    linear = [m for m in layers if not isinstance(m, ParamWrapper)]
    assert linear and all(m.lora_dropout["default"].p == 0.1 for m in linear)
    assert any(isinstance(m, ParamWrapper) for m in layers)
    assert model.peft_config["default"].lora_dropout == 0.0


def test_nf4_keeps_experts_in_the_compute_dtype_and_trains(make_ctx, tmp_path: Path) -> None:
    """peft's k-bit preparation would upcast the (unquantized) experts to fp32, doubling
    most of a MoE's memory: they stay bf16 and compute in it, gradients reach their LoRA."""
    ctx = make_ctx(model={"name_or_path": str(_saved("qwen3_moe", tmp_path / "m")),
                          "dtype": "bf16", "quantizer": {"name": "nf4",
                                                         "compute_dtype": "bf16"}})
    model, _ = build_trainable_model(ctx.model_setup, report_path=ctx.paths.model_report,
                                     gradient_checkpointing=True)
    experts = model.base_model.model.model.layers[0].mlp.experts
    assert experts.get_base_layer().gate_up_proj.dtype == torch.bfloat16
    assert model.base_model.model.model.norm.weight.dtype == torch.float32  # as peft does
    loss = model.train()(input_ids=IDS, labels=IDS).loss
    loss.backward()
    grads = [p.grad for n, p in model.named_parameters() if "experts" in n and "lora_B" in n]
    assert grads and all(g is not None and g.abs().sum() > 0 for g in grads)  # B starts at 0


@pytest.mark.parametrize("name", ["qwen3_moe", "gpt_oss", "granitemoehybrid", "llama4"])
def test_the_merge_folds_expert_updates_into_the_checkpoint_layout(name: str,
                                                                   tmp_path: Path) -> None:
    """Qwen3-MoE checkpoints store one tensor per expert and projection, gpt-oss and
    Llama 4 fused stacks ((E, in, out)), Granite its own names: the merged checkpoint
    keeps the base's layout and computes what peft computes, the adapter loaded unchanged
    by ``PeftModel.from_pretrained``."""
    base_dir = _saved(name, tmp_path / "base")
    base = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32)
    chosen = FAMILIES[name]
    lora = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"],
                      target_parameters=chosen.parameters, init_lora_weights=False)
    get_peft_model(base, lora).save_pretrained(tmp_path / "adapter")
    base = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32)
    with torch.no_grad():
        expected = PeftModel.from_pretrained(base, tmp_path / "adapter").eval()(IDS).logits
    out = tmp_path / "merged"
    out.mkdir()
    report = merge_checkpoint(base_dir, tmp_path / "adapter", out, dtype=torch.float32,
                              shard_bytes=1 << 30,
                              architecture=Architecture.of(_weightless(name), lora))
    assert _keys(out / "model.safetensors") == _keys(base_dir / "model.safetensors")
    merged = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32).eval()
    with torch.no_grad():
        got = merged(IDS).logits
    plain = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32).eval()(IDS)
    assert (got - expected).abs().max() < 1e-4
    assert (got - plain.logits).abs().max() > 1e-3  # the experts' update is in there
    lora_modules = {k.split(".lora_")[0] for k in _keys(tmp_path / "adapter" /
                                                         "adapter_model.safetensors")}
    assert report["updated_modules"] == len(lora_modules)
    assert json.loads((out / "config.json").read_text())["model_type"] == \
        FAMILIES[name].model_type


def _keys(path: Path) -> set[str]:
    from safetensors import safe_open

    with safe_open(str(path), "pt") as handle:
        return set(handle.keys())  # noqa: SIM118
