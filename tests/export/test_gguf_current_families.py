"""Native GGUF export of the late-2026 families (``tests/current_families.py``), judged by
llama.cpp: its tokenization and f16 logits against transformers, its converter
(``convert_hf_to_gguf.py``) for metadata and tensors, and ``llama_model_quantize`` for the
bytes of q8_0 and q4_k_m files. Layer patterns llama.cpp would not reproduce must be
refused by name.

Each model is the family's shape with the sizes a GGUF test needs (``GGUF_SHAPES``):
intermediate sizes of 256 so ffn_down rows fill K-quant blocks, and, where llama.cpp
fixes a layer pattern the checkpoint cannot tell it, that pattern. Built once per module.
The default suite exports four of them (``DEFAULT_RUN``), ``pytest -m families`` the rest.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import llama_cpp
import numpy as np
import pytest
import torch
from current_families import FAMILIES as SHAPES
from current_families import SHAPE
from llama_cpp_material import (
    cpp_logits,
    f16_valued_copy,
    f16_valued_logits,
    llama_cpp_tree,
    quantized_as_llama_does,
    read_gguf,
    real_tokenizer,
)
from merge_judge import visible_lora
from safetensors.torch import load_file, save_file
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

from lorapipe.errors import UserError
from lorapipe.plugins.exporters.gguf.adapter import write_adapter_gguf
from lorapipe.plugins.exporters.gguf.families import model_family
from lorapipe.plugins.exporters.gguf.writer import check_model, write_gguf

SLIDING_3_OF_4 = ["sliding_attention"] * 3 + ["full_attention"]
# family → config beyond its current_families shape, for a GGUF llama.cpp computes alike
GGUF_SHAPES: dict[str, dict[str, Any]] = {
    "granite": dict(intermediate_size=256),
    "olmo2": dict(intermediate_size=256),
    "seed_oss": dict(intermediate_size=256),
    # llama.cpp fixes NoPE on every 4th layer
    "smollm3": dict(intermediate_size=256, num_hidden_layers=4, no_rope_layers=[1, 1, 1, 0]),
    # llama.cpp reads EXAONE 4's sliding window only for the 64-layer model
    "exaone4": dict(intermediate_size=256, sliding_window=None,
                    layer_types=["full_attention", "full_attention"]),
    # llama.cpp fixes three sliding layers in four
    "cohere2": dict(intermediate_size=256, num_hidden_layers=4, layer_types=SLIDING_3_OF_4),
    # the converter takes GLM-4's special tokens from its own tokenizer's added tokens
    "glm4": dict(intermediate_size=256),
    "lfm2": dict(intermediate_size=256, block_ff_dim=256),
    "gpt_oss": dict(intermediate_size=256),
    "gemma4": dict(intermediate_size=256),
    "gemma4_moe": dict(intermediate_size=256, moe_intermediate_size=256),
    # llama.cpp renormalises the top-k router weights
    "qwen3_moe": dict(moe_intermediate_size=256, norm_topk_prob=True),
    # dense layers' FFN twice the experts', so a swap of the two lengths cannot pass
    "llama4": dict(intermediate_size=256, intermediate_size_mlp=512),
    # Granite 4's multipliers; a vocabulary padded to a multiple of 8, as the released
    # embeddings are and as the converter pads it (unpadded, its file fails to load)
    "granitemoehybrid": dict(intermediate_size=256, shared_intermediate_size=256,
                             embedding_multiplier=12.0, logits_scaling=6.0,
                             residual_multiplier=0.22, attention_multiplier=0.0078125,
                             vocab_size=128264),
    "qwen3_5": dict(intermediate_size=256),
    "qwen3_5_moe": dict(moe_intermediate_size=256, shared_expert_intermediate_size=256),
    "granitehybrid_dense": dict(intermediate_size=256, shared_intermediate_size=256,
                                vocab_size=128264),
    # the released config.json says its router's scoring function (transformers' is sigmoid)
    "deepseek_v3": dict(intermediate_size=256, moe_intermediate_size=256,
                        scoring_func="sigmoid"),
}
# family → the tokenizer its GGUF shape uses instead of current_families': llama.cpp asserts
# (id_to_token.size() == token_to_id.size()) loading the deepseek-llm fixture vocabulary as
# the converter writes it, which is not DeepSeek-V3's own anyway
GGUF_TOKENIZERS = {"deepseek_v3": "llama3"}
# the families the default suite exports (a Llama-style, a Command R tokenizer, both expert
# layouts); the others are marked `families` (`pytest -m families` runs them)
DEFAULT_RUN = ("granite", "cohere2", "qwen3_moe", "gpt_oss")
# special tokens a family's real tokenizer has and the shape's stand-in lacks: Llama 3's
# vocabulary has GLM-4's <|endoftext|> but not its <|user|>; the Gemma 4 vocabulary file
# has the turn markers, but not among the special tokens (so both converters would type
# them as text, and llama.cpp would split every turn marker of a chat)
ADDED_TOKENS = {"glm4": ["<|user|>"], "gemma4": ["<|turn>", "<turn|>"],
                "gemma4_moe": ["<|turn>", "<turn|>"]}
# layer patterns other than the one llama.cpp fixes for the family (config beyond the
# shape), refused with a phrase of the reason
OFF_PATTERN: dict[str, tuple[dict[str, Any], str]] = {
    "smollm3": (dict(num_hidden_layers=2, no_rope_layers=[1, 0]), "no_rope_layers"),
    "exaone4": (dict(sliding_window=128, layer_types=["sliding_attention", "full_attention"]),
                "sliding window"),
    "cohere2": (dict(num_hidden_layers=2, layer_types=["sliding_attention", "full_attention"]),
                "layer_types"),
    "qwen3_moe": (dict(norm_topk_prob=False), "norm_topk_prob"),
    # M-RoPE sections llama.cpp cannot run: the default [11, 11, 10] wider than a 16-wide
    # head (ggml asserts), or rotated pairs on the fourth axis (text's position 0 there)
    "qwen3_5": (dict(head_dim=16, rope_parameters=dict(rope_type="default")),
                "mrope_section"),
    "qwen3_5_moe": (dict(rope_parameters=dict(rope_type="default",
                                              mrope_section=[2, 2, 2, 2])), "mrope_section"),
    # (llama.cpp aborts loading the converter's file of it: no full-attention layer)
    "llama4": (dict(num_hidden_layers=2, no_rope_layers=[1, 0]), "no_rope_layers"),
}
PROBES = [
    "Hello world",
    "The quick brown fox, jumps! over... the lazy dog? (yes) [no] {maybe}",
    "Numbers: 7 42 12345 3.14159 2024-01-15 $19.99 50%",
    "Café naïve Zürich 東京 Москва العربية 🙂 → ✓",
    "  leading spaces\n\nnew lines\tand tabs   ",
]
CHAT = [{"role": "user", "content": "What is 7 plus 2?"},
        {"role": "assistant", "content": "7 plus 2 is 9."},
        {"role": "user", "content": "And 3 plus 3?"}]


def _settings(name: str, vocab: Any, extra: dict[str, Any]) -> dict[str, Any]:
    shape = SHAPES[name]
    settings = {**SHAPE, **shape.config, "vocab_size": len(vocab),
                "bos_token_id": vocab.bos_token_id, "eos_token_id": vocab.eos_token_id,
                "pad_token_id": vocab.pad_token_id, **extra}
    if shape.model_type == "gemma4_text":
        settings["vocab_size_per_layer_input"] = settings["vocab_size"]
    return settings


def build_gguf_shape(name: str, out: Path) -> Path:
    """``current_families.build_family`` with ``GGUF_SHAPES[name]`` on top of the shape
    (and ``ADDED_TOKENS[name]`` in its tokenizer)."""
    shape = SHAPES[name]
    shutil.copytree(real_tokenizer(GGUF_TOKENIZERS.get(name, shape.tokenizer)), out)
    tokenizer = AutoTokenizer.from_pretrained(out)
    if name in ADDED_TOKENS:
        tokenizer.add_special_tokens({"additional_special_tokens": ADDED_TOKENS[name]})
        tokenizer.save_pretrained(out)
    settings = _settings(name, tokenizer, GGUF_SHAPES[name])
    config = AutoConfig.for_model(shape.model_type, **settings)
    torch.manual_seed(0)
    AutoModelForCausalLM.from_config(config, dtype=torch.float32).save_pretrained(out)
    return out


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Callable[[str], tuple[Path, Path]]:
    """Each family's model and our f16 GGUF of it, built on first use."""
    cache: dict[str, tuple[Path, Path]] = {}

    def build(name: str) -> tuple[Path, Path]:
        if name not in cache:
            tmp = tmp_path_factory.mktemp(name)
            model = build_gguf_shape(name, tmp / "model")
            cache[name] = model, write_gguf(model, tmp / "model-f16.gguf", "f16",
                                            progress=False).path
        return cache[name]

    return build


@pytest.fixture(scope="module", params=[
    pytest.param(name, marks=() if name in DEFAULT_RUN else pytest.mark.families)
    for name in GGUF_SHAPES])
def exported(request: pytest.FixtureRequest, built) -> tuple[str, Path, Path]:
    return request.param, *built(request.param)


def test_gguf_tokenizes_and_computes_like_transformers(exported) -> None:
    _, model_dir, f16 = exported
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    chat = tokenizer.apply_chat_template(CHAT, tokenize=False, add_generation_prompt=True)
    llm = llama_cpp.Llama(str(f16), vocab_only=True, verbose=False)
    try:
        for text in [*PROBES, chat]:
            expected = tokenizer(text, add_special_tokens=False)["input_ids"]
            assert llm.tokenize(text.encode(), add_bos=False, special=True) == expected, text
    finally:
        llm.close()
    ids = tokenizer(chat, add_special_tokens=False)["input_ids"]
    hf = f16_valued_logits(model_dir, ids)
    cpp = cpp_logits(f16, ids)
    assert np.abs(cpp - hf).max() < 0.02 * hf.std() + 1e-3, np.abs(cpp - hf).max()


# family → config.json keys the converter needs that transformers 5 no longer writes
# (Cohere 2's rotary_pct: transformers 5's Cohere 2 rotates the whole head), or spells
# otherwise (Granite 4's layer kinds, which the converter reads by their released names)
CONVERTER_CONFIG: dict[str, dict[str, Any]] = {
    "cohere2": {"rotary_pct": 1.0},
    "granitemoehybrid": {"layer_types": ["mamba", "attention"]},
    "granitehybrid_dense": {"layer_types": ["mamba", "attention"]},
}
# family → converter options for the file our exporter writes (transformers' Qwen3.5 has
# no multi-token-prediction layers, so a saved one has no mtp.* tensors)
CONVERTER_OPTIONS: dict[str, list[str]] = {"qwen3_5": ["--no-mtp"], "qwen3_5_moe": ["--no-mtp"]}
# family → (our tokenizer.ggml.pre, the converter's) where the two differ: the converter
# names a pre-tokenizer by hashing its tokens of a probe text, and the Qwen 3.5 stand-in
# (Qwen2's vocabulary, Qwen 3.5's split) tokenizes that probe as Qwen1.5 does; its split
# is llama.cpp's qwen35 (the released Qwen 3.5 vocabulary hashes to qwen35)
CONVERTER_PRE = {"qwen3_5": ("qwen35", "qwen2"), "qwen3_5_moe": ("qwen35", "qwen2")}


def _converter_input(name: str, model_dir: Path, tmp: Path) -> Path:
    """The directory the converter reads: ours, with ``CONVERTER_CONFIG[name]`` over its
    config.json."""
    if name not in CONVERTER_CONFIG:
        return model_dir
    copy = tmp / "converter-input"
    copy.mkdir()
    for item in model_dir.iterdir():
        (copy / item.name).symlink_to(item)
    (copy / "config.json").unlink()
    config = json.loads((model_dir / "config.json").read_text())
    (copy / "config.json").write_text(json.dumps({**config, **CONVERTER_CONFIG[name]}))
    return copy


def _fields(path: Path) -> tuple[dict[str, Any], dict[str, tuple[str, tuple, np.ndarray]]]:
    fields, found = read_gguf(path)
    meta = {key: value for key, value in fields.items() if not key.startswith("general.")}
    meta["general.architecture"] = fields["general.architecture"]
    meta["general.file_type"] = fields["general.file_type"]
    return meta, {t.name: (t.type.name, t.shape, t.data) for t in found.values()}


def test_gguf_has_parity_with_llama_cpp_converter(exported, tmp_path: Path) -> None:
    name, model_dir, f16 = exported
    reference = tmp_path / "converter-f16.gguf"
    subprocess.run([sys.executable, str(llama_cpp_tree() / "convert_hf_to_gguf.py"),
                    str(_converter_input(name, model_dir, tmp_path)), "--outtype", "f16",
                    "--outfile", str(reference), *CONVERTER_OPTIONS.get(name, [])],
                   check=True, capture_output=True)
    ours_meta, ours = _fields(f16)
    their_meta, theirs = _fields(reference)
    if name in CONVERTER_PRE:
        pre = "tokenizer.ggml.pre"
        assert (ours_meta.pop(pre), their_meta.pop(pre)) == CONVERTER_PRE[name]
    assert ours_meta == their_meta
    assert {n: t[:2] for n, t in ours.items()} == {n: t[:2] for n, t in theirs.items()}
    for tensor, (_, _, data) in ours.items():
        np.testing.assert_array_equal(data, theirs[tensor][2], err_msg=tensor)


def test_quantized_files_are_llama_quantizes(exported, tmp_path: Path) -> None:
    """Our q8_0 and q4_k_m hold llama-quantize's types and bytes (from our f16 file, so
    both start from the same values), K-quant blocks included, and llama.cpp runs them."""
    name, model_dir, f16 = exported
    rounded = f16_valued_copy(model_dir, tmp_path / "f16-values")
    for type_name, ftype in (("q8_0", llama_cpp.LLAMA_FTYPE_MOSTLY_Q8_0),
                             ("q4_k_m", llama_cpp.LLAMA_FTYPE_MOSTLY_Q4_K_M)):
        ours = quantized_as_llama_does(rounded, f16, type_name, ftype, tmp_path)
    types = {t.name: t.type.name for t in read_gguf(ours)[1].values()}
    if name == "qwen3_moe":  # gate/up rows are hidden_size (64) long: Q4_K's fallback
        assert {types[f"blk.{i}.ffn_{w}_exps.weight"] for i in range(2) for w in
                ("gate", "up")} == {"Q5_0"}
        assert [types[f"blk.{i}.ffn_down_exps.weight"] for i in range(2)] == ["Q4_K", "Q6_K"]
        assert {types[f"blk.{i}.ffn_gate_inp.weight"] for i in range(2)} == {"F32"}
    else:
        assert "Q6_K" in types.values()  # ffn_down: K-quant blocks, not only fallbacks
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    assert np.isfinite(cpp_logits(ours, tokenizer(PROBES[1])["input_ids"])).all()


@pytest.mark.parametrize("name", list(OFF_PATTERN))
def test_layer_patterns_llama_cpp_would_not_reproduce_are_refused(name: str,
                                                                  tmp_path: Path) -> None:
    extra, reason = OFF_PATTERN[name]
    _refused(name, extra, reason, tmp_path)


# what else llama.cpp's Llama 4 graph fixes, each set otherwise, and a phrase of the reason
LLAMA4_FIXED = [
    (dict(attention_chunk_size=128), "attention_chunk_size"),  # logits differ past 128
    (dict(attn_temperature_tuning=False), "attn_temperature_tuning"),
    (dict(use_qk_norm=False), "use_qk_norm"),
    (dict(moe_layers=[0, 1, 2, 3]), "moe_layers"),
    (dict(num_hidden_layers=2, no_rope_layers=[1, 1]), "num_hidden_layers 2"),
    (dict(attention_bias=True), "attention_bias"),  # llama.cpp: wrong number of tensors
]


@pytest.mark.parametrize(("extra", "reason"), LLAMA4_FIXED)
def test_llama4_values_llama_cpp_fixes_are_refused(extra: dict[str, Any], reason: str,
                                                   tmp_path: Path) -> None:
    _refused("llama4", extra, reason, tmp_path)


def _refused(name: str, extra: dict[str, Any], reason: str, tmp_path: Path) -> None:
    shape = SHAPES[name]
    settings = {**SHAPE, **shape.config, **extra, "vocab_size": 1024}
    if shape.model_type == "gemma4_text":
        settings["vocab_size_per_layer_input"] = 1024
    AutoConfig.for_model(shape.model_type, **settings).save_pretrained(tmp_path)
    with pytest.raises(UserError, match=reason) as refused:
        model_family(tmp_path)
    assert "convert_hf_to_gguf.py" in str(refused.value)


def test_fused_expert_checkpoint_gives_the_same_file(built, tmp_path: Path) -> None:
    """transformers 5's fused layout (experts.gate_up_proj / down_proj, as the model holds
    them in memory) and the per-expert layout it saves give byte-identical files."""
    model_dir, f16 = built("qwen3_moe")
    fused_dir = tmp_path / "fused"
    shutil.copytree(model_dir, fused_dir)
    weights = load_file(model_dir / "model.safetensors")
    fused: dict[str, torch.Tensor] = {}
    for key, tensor in weights.items():
        if ".mlp.experts." not in key:
            fused[key] = tensor
    for layer in range(2):
        prefix = f"model.layers.{layer}.mlp.experts"

        def stack(kind: str, prefix: str = prefix) -> torch.Tensor:
            return torch.stack([weights[f"{prefix}.{e}.{kind}.weight"] for e in range(4)])

        fused[f"{prefix}.gate_up_proj"] = torch.cat([stack("gate_proj"), stack("up_proj")], 1)
        fused[f"{prefix}.down_proj"] = stack("down_proj")
    save_file(fused, fused_dir / "model.safetensors")
    ours = write_gguf(fused_dir, tmp_path / "fused-f16.gguf", "f16", progress=False).path
    _, got = _fields(ours)
    _, want = _fields(f16)
    assert {n: t[:2] for n, t in got.items()} == {n: t[:2] for n, t in want.items()}
    for tensor, (_, _, data) in got.items():
        np.testing.assert_array_equal(data, want[tensor][2], err_msg=tensor)


def test_sharded_checkpoint_gives_the_same_file(built, tmp_path: Path) -> None:
    """Experts of one stack read across several safetensors shards (each shard kept open
    only while its tensors are written) give the single file's bytes."""
    model_dir, f16 = built("qwen3_moe")
    sharded = tmp_path / "sharded"
    shutil.copytree(model_dir, sharded, ignore=shutil.ignore_patterns("model.safetensors"))
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    model.save_pretrained(sharded, max_shard_size="200KB")
    assert len(list(sharded.glob("*.safetensors"))) > 3
    ours = write_gguf(sharded, tmp_path / "sharded-f16.gguf", "f16", progress=False).path
    _, got = _fields(ours)
    _, want = _fields(f16)
    assert {n: t[:2] for n, t in got.items()} == {n: t[:2] for n, t in want.items()}
    for tensor, (_, _, data) in got.items():
        np.testing.assert_array_equal(data, want[tensor][2], err_msg=tensor)


@pytest.mark.families
def test_qwen3_5_mtp_block_is_left_out(built, tmp_path: Path) -> None:
    """Qwen3.5's multi-token-prediction block (released checkpoints carry ``mtp.*``, which
    transformers' model never reads and the merge copies through) leaves the file as it
    is without it: what the converter's --no-mtp writes."""
    model_dir, f16 = built("qwen3_5")
    with_mtp = shutil.copytree(model_dir, tmp_path / "with-mtp")
    weights = load_file(model_dir / "model.safetensors")
    layer = {k.removeprefix("model.layers.1."): v for k, v in weights.items()
             if k.startswith("model.layers.1.")}
    hidden = weights["model.norm.weight"].shape[0]
    mtp = {"mtp.fc.weight": torch.randn(hidden, 2 * hidden), "mtp.norm.weight": torch.ones(hidden),
           "mtp.pre_fc_norm_embedding.weight": torch.ones(hidden),
           "mtp.pre_fc_norm_hidden.weight": torch.ones(hidden),
           **{f"mtp.layers.0.{k}": v.clone() for k, v in layer.items()}}
    save_file({**weights, **mtp}, with_mtp / "model.safetensors")
    ours = write_gguf(with_mtp, tmp_path / "mtp-f16.gguf", "f16", progress=False).path
    got_meta, got = _fields(ours)
    want_meta, want = _fields(f16)
    assert got_meta == want_meta
    assert {n: t[:2] for n, t in got.items()} == {n: t[:2] for n, t in want.items()}
    for tensor, (_, _, data) in got.items():
        np.testing.assert_array_equal(data, want[tensor][2], err_msg=tensor)


# all but the experts of the MoE families (their expert LoRA is refused below)
MOE_ATTENTION = {"qwen3_moe": ["q_proj", "k_proj", "v_proj", "o_proj"],
                 "qwen3_5_moe": ["q_proj", "k_proj", "v_proj", "o_proj", "in_proj_qkv",
                                 "in_proj_z", "in_proj_b", "in_proj_a", "out_proj",
                                 "shared_expert.gate_proj", "shared_expert.up_proj",
                                 "shared_expert.down_proj", "shared_expert_gate"],
                 # and Llama 4's dense and shared-expert MLPs (not all-linear: peft's LoRA
                 # fails on its router, an nn.Linear that returns a tuple)
                 "llama4": ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj",
                            "down_proj"],
                 "gpt_oss": ["q_proj", "k_proj", "v_proj", "o_proj"],
                 "granitemoehybrid": ["q_proj", "k_proj", "v_proj", "o_proj", "in_proj",
                                      "out_proj", "input_linear", "output_linear"],
                 "gemma4_moe": ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj",
                                "down_proj", "per_layer_input_gate", "per_layer_projection",
                                "per_layer_model_projection"],
                 "deepseek_v3": ["q_a_proj", "q_b_proj", "kv_a_proj_with_mqa", "kv_b_proj",
                                 "o_proj"]}


def test_base_plus_adapter_gguf_is_the_merged_gguf(exported, tmp_path: Path) -> None:
    """llama.cpp judges the adapter GGUF: the family's base GGUF with our adapter applied
    (``--lora``) computes what the GGUF of peft's own merge computes. Every linear layer
    is adapted; on the MoE families the attention (their expert LoRA is refused below);
    a layer no llama.cpp LoRA pair can update is refused by name, then left out."""
    from peft import LoraConfig, get_peft_model

    name, model_dir, _ = exported
    targets = MOE_ATTENTION.get(name, "all-linear")
    refused = list(model_family(model_dir).lora_refused)
    if refused:
        model = get_peft_model(
            AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32),
            LoraConfig(r=8, lora_alpha=16, target_modules=targets))
        model.save_pretrained(tmp_path / "with-refused")
        with pytest.raises(UserError, match=rf"the adapter updates .*\.({'|'.join(refused)}): "
                                            "llama.cpp"):
            write_adapter_gguf(tmp_path / "with-refused", model_dir, tmp_path / "x.gguf",
                               "f32")
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32),
                           LoraConfig(r=8, lora_alpha=16, target_modules=targets,
                                      exclude_modules=refused or None))
    visible_lora(model)
    model.save_pretrained(tmp_path / "adapter")
    merged = tmp_path / "merged"
    shutil.copytree(model_dir, merged)
    model.merge_and_unload().save_pretrained(merged)
    base_gguf = write_gguf(model_dir, tmp_path / "base-f32.gguf", "f32", progress=False).path
    merged_gguf = write_gguf(merged, tmp_path / "merged-f32.gguf", "f32", progress=False).path
    adapter_gguf = write_adapter_gguf(tmp_path / "adapter", model_dir,
                                      tmp_path / "adapter-f32.gguf", "f32")
    ids = llama_cpp.Llama(str(base_gguf), vocab_only=True, verbose=False).tokenize(
        PROBES[1].encode())
    expected, base = cpp_logits(merged_gguf, ids), cpp_logits(base_gguf, ids)
    error = np.abs(cpp_logits(base_gguf, ids, lora=adapter_gguf) - expected).max()
    # Granite divides its logits by logits_scaling, so changes there are small: the
    # adapter's change must stand well clear of the error, whatever its size
    assert error < 2e-3 and np.abs(expected - base).max() > 20 * error


def test_expert_lora_adapter_export_is_refused(built, tmp_path: Path) -> None:
    """A LoRA on the fused expert weights (peft target_parameters) is not written as a
    llama.cpp adapter: refused with the reason, not exported without its expert part."""
    from peft import LoraConfig, get_peft_model

    model_dir, _ = built("qwen3_moe")
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    config = LoraConfig(r=4, target_modules=["q_proj"],
                        target_parameters=["experts.gate_up_proj", "experts.down_proj"])
    get_peft_model(model, config).save_pretrained(tmp_path / "adapter")
    with pytest.raises(UserError, match=r"fused expert weights \(target_parameters "
                                        r"experts\.down_proj, experts\.gate_up_proj\)"):
        write_adapter_gguf(tmp_path / "adapter", model_dir, tmp_path / "adapter.gguf", "f16")
    assert not (tmp_path / "adapter.gguf").exists()


def test_glm4_without_its_special_tokens_is_refused(tmp_path: Path) -> None:
    """GLM-4 on a tokenizer without GLM-4's <|user|> (the shape's Llama 3 stand-in), which
    the converter cannot convert either: refused before any weight."""
    shape = SHAPES["glm4"]
    shutil.copytree(real_tokenizer(shape.tokenizer), tmp_path, dirs_exist_ok=True)
    settings = _settings("glm4", AutoTokenizer.from_pretrained(tmp_path), {})
    AutoConfig.for_model(shape.model_type, **settings).save_pretrained(tmp_path)
    with pytest.raises(UserError, match=r"GLM-4's tokenizer has no <\|user\|>"):
        check_model(tmp_path)


def test_a_vocabulary_llama_cpp_would_abort_on_is_refused(built, tmp_path: Path) -> None:
    """Two ids with one text (here an added token renamed to a word the vocabulary has;
    undecodable byte tokens read back as U+FFFD do it too): llama.cpp aborts loading any
    such file, the converter's included, so the exporter refuses it before writing."""
    from lorapipe.plugins.exporters.gguf.writer import check_model

    model_dir = shutil.copytree(built("granite")[0], tmp_path / "model")
    path = model_dir / "tokenizer.json"
    tokenizer = json.loads(path.read_text())
    tokenizer["added_tokens"][-1]["content"] = "hello"
    path.write_text(json.dumps(tokenizer))
    with pytest.raises(UserError, match=r"tokenizer\.json: 1 token text\(s\) stand for several "
                                        r"ids \('hello' for 2\); llama\.cpp needs distinct"):
        check_model(model_dir)
