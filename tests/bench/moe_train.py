"""LoRA on a Qwen3-MoE-shaped model: lorapipe against TRL + PEFT on the same CPU work,
experts adapted on both sides.

Run:  python tests/bench/moe_train.py [--samples 64] [--length 256] [--repeat N]
Needs TRL for the comparison (a bench requirement, not a lorapipe dependency):
      pip install trl==1.16.0

The model is a seeded random Qwen3-MoE (transformers' ``qwen3_moe``: hidden 512, 4
layers, 8 experts of intermediate 512, top-2 routing, q/k norms, 32,000-token vocabulary;
61 M parameters: 25 M in the fused expert stacks, 33 M in the untied embeddings and
head). The data is ``--samples`` sequences of ``--length`` random token ids, every token
trained, so neither tool pads or
masks anything. Both train the same LoRA (r=16, alpha 32, no dropout: peft cannot drop
out a parameter's input) on q/k/v/o and the fused experts (``experts.gate_up_proj``,
``experts.down_proj`` through peft's ``target_parameters``), in fp32, 4 sequences per
micro batch × 2 accumulation steps, one epoch, the same learning rate and cosine decay.

- lorapipe: the model stage (``build_trainable_model``: ``all_linear`` chooses the
  targets above, quantizer ``none``) and the training loop (``train()``).
- TRL: ``SFTTrainer`` with the same ``LoraConfig``, pre-tokenized data
  (``completion_only_loss`` off: every token is trained, as on the lorapipe side).

Printed per tool: tokens/s over the training call's wall time, tokens per CPU-second (all
threads), the final loss and the process's peak RSS. Each run is its own process; the
load average is printed beside each: other work on the 2 cores moves every figure.
``--repeat N`` runs both N times in turn and keeps each one's fastest run.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

MICRO, ACCUM, LR, R = 4, 2, 1e-4, 16
ATTENTION = ["q_proj", "k_proj", "v_proj", "o_proj"]
EXPERTS = ["experts.gate_up_proj", "experts.down_proj"]
TOOLS = ("lorapipe", "trl")


def build(workdir: Path, samples: int, length: int) -> None:
    """The model (random, seeded) with tiny-llama's tokenizer files, and the token ids."""
    import numpy as np
    import torch
    from datasets import Dataset
    from transformers import AutoTokenizer, Qwen3MoeConfig, Qwen3MoeForCausalLM

    from lorapipe.model.source import resolve_model_path

    tokenizer = AutoTokenizer.from_pretrained(resolve_model_path("tiny-llama"))
    torch.manual_seed(0)
    config = Qwen3MoeConfig(vocab_size=32_000, hidden_size=512, intermediate_size=1376,
                            moe_intermediate_size=512, num_experts=8, num_experts_per_tok=2,
                            num_hidden_layers=4, num_attention_heads=8, num_key_value_heads=4,
                            head_dim=64, max_position_embeddings=length,
                            pad_token_id=tokenizer.pad_token_id)
    Qwen3MoeForCausalLM(config).save_pretrained(workdir / "model")
    tokenizer.save_pretrained(workdir / "model")
    ids = np.random.default_rng(0).integers(10, config.vocab_size, size=(samples, length))
    Dataset.from_dict({"input_ids": ids.tolist(), "labels": ids.tolist()}).save_to_disk(
        str(workdir / "data"))


def run_lorapipe(workdir: Path) -> dict:
    import torch
    from datasets import load_from_disk

    from lorapipe.config import validate_config
    from lorapipe.context import RunContext
    from lorapipe.model.adapters import build_trainable_model
    from lorapipe.plan import build_plan
    from lorapipe.train import TrainSetup, train

    data = load_from_disk(str(workdir / "data"))
    (workdir / "unused.jsonl").write_text("{}\n")  # the data is already tokenized
    config = validate_config({
        "model": {"name_or_path": str(workdir / "model"), "quantizer": "none",
                  "dtype": "fp32"},
        "adapter": {"r": R, "alpha": 2 * R, "dropout": 0.0},
        "data": {"loader": {"name": "jsonl", "path": str(workdir / "unused.jsonl")},
                 "max_length": len(data[0]["input_ids"])},
        "train": {"epochs": 1, "micro_batch_size": MICRO, "gradient_accumulation_steps": ACCUM,
                  "learning_rate": LR, "warmup_steps": 0, "gradient_checkpointing": False,
                  "logging_steps": 10**6, "save_steps": 10**6, "max_grad_norm": 1.0},
        "output_dir": str(workdir / f"lorapipe-{os.getpid()}"),
    })
    ctx = RunContext(build_plan(config))
    torch.manual_seed(0)
    model, report = build_trainable_model(ctx.model_setup, gradient_checkpointing=False,
                                          report_path=workdir / "model_report.json")
    targets = report["targets"]
    assert sorted(targets["modules"]) == sorted(ATTENTION), targets
    assert sorted(targets["parameters"]) == sorted(EXPERTS), targets
    setup = TrainSetup(config=config.train, paths=ctx.paths, pad_token_id=0,
                       max_length=config.data.max_length, config_hash="bench")
    cpu = time.process_time()
    summary = train(model, data, None, setup)
    cpu = time.process_time() - cpu
    records = [json.loads(line) for line in ctx.paths.metrics.read_text().splitlines()]
    loss = [r for r in records if "loss" in r][-1]["loss"]
    tokens = sum(len(ids) for ids in data["input_ids"])
    return {"tokens_per_s": tokens / summary["seconds"], "seconds": summary["seconds"],
            "tokens": tokens, "steps": summary["steps"], "loss": loss, "cpu_seconds": cpu,
            "trainable": report["parameters"]["trainable"]}


def run_trl(workdir: Path) -> dict:
    import torch
    from datasets import load_from_disk
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import SFTConfig, SFTTrainer

    data = load_from_disk(str(workdir / "data")).remove_columns("labels")
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(workdir / "model", dtype=torch.float32)
    args = SFTConfig(
        output_dir=str(workdir / "trl"), per_device_train_batch_size=MICRO,
        gradient_accumulation_steps=ACCUM, num_train_epochs=1, learning_rate=LR,
        warmup_steps=0, lr_scheduler_type="cosine", max_length=len(data[0]["input_ids"]),
        completion_only_loss=False, logging_steps=1, save_strategy="no", report_to="none",
        use_cpu=True, bf16=False, gradient_checkpointing=False, dataloader_num_workers=0,
        max_grad_norm=1.0, seed=0, disable_tqdm=True,
    )
    lora = LoraConfig(r=R, lora_alpha=2 * R, lora_dropout=0.0, target_modules=ATTENTION,
                      target_parameters=EXPERTS, task_type="CAUSAL_LM")
    trainer = SFTTrainer(model=model, args=args, train_dataset=data, peft_config=lora,
                         processing_class=AutoTokenizer.from_pretrained(workdir / "model"))
    trainable = sum(p.numel() for p in trainer.model.parameters() if p.requires_grad)
    started, cpu = time.perf_counter(), time.process_time()
    trainer.train()
    seconds, cpu = time.perf_counter() - started, time.process_time() - cpu
    tokens = sum(len(ids) for ids in data["input_ids"])
    losses = [r["loss"] for r in trainer.state.log_history if "loss" in r]
    return {"tokens_per_s": tokens / seconds, "seconds": seconds, "tokens": tokens,
            "steps": trainer.state.global_step, "loss": losses[-1], "cpu_seconds": cpu,
            "trainable": trainable}


def run_worker(workdir: Path, tool: str) -> dict:
    out = subprocess.run([sys.executable, __file__, "--worker", tool, "--workdir", str(workdir)],
                         capture_output=True, text=True, check=False)
    line = [x for x in out.stdout.splitlines() if x.startswith("RESULT ")]
    if out.returncode or not line:
        sys.exit(f"{tool} failed:\n{out.stdout[-2000:]}\n{out.stderr[-4000:]}")
    result = json.loads(line[-1][7:])
    result["load"] = os.getloadavg()[0]
    print(f"{tool}: {result}", file=sys.stderr)
    return result


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--samples", type=int, default=64)
    parser.add_argument("--length", type=int, default=256)
    parser.add_argument("--repeat", type=int, default=1)
    parser.add_argument("--worker", choices=TOOLS)
    parser.add_argument("--workdir", type=Path)
    args = parser.parse_args()
    if args.worker:
        result = (run_lorapipe if args.worker == "lorapipe" else run_trl)(args.workdir)
        result["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        print("RESULT " + json.dumps(result))
        return
    results: dict[str, dict] = {}
    load = os.getloadavg()[0]
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        build(workdir, args.samples, args.length)
        for _ in range(args.repeat):
            for tool in TOOLS:
                result = run_worker(workdir, tool)
                if result["tokens_per_s"] > results.get(tool, {}).get("tokens_per_s", 0):
                    results[tool] = result
    print(f"Qwen3-MoE-shaped model (8 experts, top-2); {args.samples} × {args.length} tokens, "
          f"micro batch {MICRO} × {ACCUM}; LoRA r={R} on attention and experts; fp32; load "
          f"average {load:.1f} at the start; best of {args.repeat} run(s) each")
    print(f"{'':9s} {'trainable':>9s} {'steps':>5s} {'tokens/s':>8s} {'seconds':>7s} "
          f"{'tok/CPU-s':>9s} {'loss':>7s} {'peak RSS':>9s} {'load':>5s}")
    for tool, r in results.items():
        print(f"{tool:9s} {r['trainable']:9,d} {r['steps']:5d} {r['tokens_per_s']:8.0f} "
              f"{r['seconds']:7.1f} {r['tokens'] / r['cpu_seconds']:9.0f} {r['loss']:7.3f} "
              f"{r['peak_rss_mb']:6.0f} MB {r['load']:5.1f}")
    ours, theirs = results["lorapipe"], results["trl"]
    print(f"lorapipe / TRL: {ours['tokens_per_s'] / theirs['tokens_per_s']:.2f}x tokens/s, "
          f"{ours['peak_rss_mb'] / theirs['peak_rss_mb']:.2f}x peak RSS")


if __name__ == "__main__":
    main()
