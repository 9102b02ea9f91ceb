"""LoRA injection: the model is unchanged at B = 0 and only adapter weights train."""

from __future__ import annotations

import pytest
import torch

from lorapipe.model.adapters import build_trainable_model, lora_config

IDS = torch.tensor([[5, 17, 300, 42, 9, 1000, 77, 3]])


@pytest.mark.parametrize(("variant", "quantizer"), [
    ({}, "nf4"),
    ({"use_rslora": True}, "nf4"),
    ({"use_dora": True}, "none"),
    ({"use_dora": True}, "nf4"),  # eval forward first: bitsandbytes must not repack (loading.py)
], ids=["lora-nf4", "rslora-nf4", "dora-none", "dora-nf4"])
def test_injection_keeps_logits_and_trains_only_adapters(load_base, make_ctx, variant: dict,
                                                          quantizer: str) -> None:
    ctx = make_ctx(adapter={"r": 4, **variant},
                         model={"name_or_path": "tiny-llama", "quantizer": quantizer})
    base = load_base(ctx).eval()
    with torch.no_grad():
        expected = base(input_ids=IDS).logits
    model, report = build_trainable_model(ctx.model_setup, report_path=ctx.paths.model_report,
                                          gradient_checkpointing=False)
    with torch.no_grad():
        got = model.eval()(input_ids=IDS).logits
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4)
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n for n in trainable)
    assert any("lora_magnitude_vector" in n for n in trainable) is bool(variant.get("use_dora"))
    assert report["parameters"]["trainable"] == sum(
        p.numel() for p in model.parameters() if p.requires_grad)
    q_proj = model.base_model.model.model.layers[0].self_attn.q_proj
    assert report["adapter"]["scaling"] == q_proj.scaling["default"]  # as peft applies it
    assert report["adapter"]["scaling"] == 32 / (2 if variant.get("use_rslora") else 4)


def test_modules_to_save_train_in_full(make_ctx) -> None:
    ctx = make_ctx(adapter={"r": 4, "modules_to_save": ["lm_head"]},
                         model={"name_or_path": "tiny-llama", "quantizer": "none"})
    model, report = build_trainable_model(ctx.model_setup, report_path=ctx.paths.model_report,
                                          gradient_checkpointing=False)
    saved = [n for n, p in model.named_parameters() if p.requires_grad and "lm_head" in n]
    assert saved and all("modules_to_save" in n for n in saved)
    assert report["parameters"]["per_target"]["q_proj"]["base_layer"] == "Linear"


def test_lora_config_carries_every_option(make_ctx) -> None:
    ctx = make_ctx(adapter={"r": 8, "alpha": 4, "dropout": 0.1, "bias": "lora_only",
                                  "use_rslora": True, "init": "gaussian",
                                  "modules_to_save": ["lm_head"]})
    peft_config = lora_config(ctx.config.adapter, ["q_proj", "v_proj"])
    assert (peft_config.r, peft_config.lora_alpha, peft_config.lora_dropout) == (8, 4, 0.1)
    assert peft_config.bias == "lora_only" and peft_config.use_rslora
    assert peft_config.init_lora_weights == "gaussian"
    assert set(peft_config.target_modules) == {"q_proj", "v_proj"}
    assert peft_config.modules_to_save == ["lm_head"]
