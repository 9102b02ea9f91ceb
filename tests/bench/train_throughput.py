"""Real (non-pad) trained tokens/s of lorapipe's loop vs TRL's SFTTrainer, same work.

Run:  python tests/bench/train_throughput.py [--steps 30] [--rows 600] [--vocab-size N]
          [--gradient-checkpointing | --no-gradient-checkpointing]
          [--dtypes fp32 bf16 default]

``--dtypes`` (default fp32) runs each tool per compute dtype: ``bf16`` loads bf16 weights
and trains under bf16 autocast (lorapipe's loop autocasts to the base's half dtype;
TRL with ``bf16=True``), ``default`` runs TRL at its own default and lorapipe at
``model.dtype: auto``. With fp32 and bf16 both, the bf16/fp32 throughput ratio and how
far the per-step loss curves drift apart are printed: the measurement behind ``auto``'s
choice on a CPU (core/model/dtypes.py).

Both train the same randomly initialised Llama (~4× the hidden size of tiny-llama, 6
layers, a 32,000-token vocabulary like Llama 2's or Mistral's: the output head's share of
the work and memory is then the one a real model has, which tiny-llama's 2,048 tokens
would hide; ``--vocab-size 2048`` measures that case) with the same LoRA config,
effective batch (micro 4 × accumulation 2 packed rows of up to max_length tokens),
optimizer steps, precision (fp32) and learning rate, each
with its best batching option: packing (lorapipe: worst-fit-decreasing rows with
per-example position ids; TRL: ``packing=True``, best-fit-decreasing, padding-free). Each
runs in its own process so peak RSS is its own. Tokens/s counts real input tokens of the
batches trained, over the training loop's wall time.

Like for like: ``SFTConfig`` defaults to ``bf16=True``, which on a CPU with bf16 units
autocasts TRL's matmuls to bf16, so fp32 is set explicitly. Gradient checkpointing (on
by default in both tools; on ours switched through the model stage's own helper, since
``train()`` trains the model it is given as it is) runs both ways, unless one is named.
Printed: each run, the ratios at the same setting, and the comparison a user with a
memory budget makes: TRL at its default against lorapipe's fastest setting whose peak RSS
is no higher.
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

import numpy as np

MAX_LENGTH, MICRO, ACCUM, LR = 256, 4, 2, 1e-4
LORA = dict(r=16, lora_alpha=32, lora_dropout=0.0, target_modules="all-linear",
            task_type="CAUSAL_LM")


def build(workdir: Path, rows: int, vocab_size: int) -> None:
    """The model (random, seeded; embedding and output head of ``vocab_size`` rows) and a
    pre-tokenized dataset with masked prompts (ids from tiny-llama's range)."""
    import torch
    from datasets import Dataset
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    from lorapipe.model.source import resolve_model_path

    tokenizer = AutoTokenizer.from_pretrained(resolve_model_path("tiny-llama"))
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=max(vocab_size, len(tokenizer)), hidden_size=512,
                         intermediate_size=1376, num_hidden_layers=6, num_attention_heads=8,
                         num_key_value_heads=4, max_position_embeddings=1024,
                         pad_token_id=tokenizer.pad_token_id)
    LlamaForCausalLM(config).save_pretrained(workdir / "model")
    tokenizer.save_pretrained(workdir / "model")
    rng = np.random.default_rng(0)
    data: dict[str, list] = {"input_ids": [], "labels": [], "completion_mask": []}
    for _ in range(rows):
        length = int(rng.integers(16, MAX_LENGTH + 1))
        ids = rng.integers(10, 2000, size=length).tolist()
        prompt = length // 3
        data["input_ids"].append(ids)
        data["labels"].append([-100] * prompt + ids[prompt:])
        data["completion_mask"].append([0] * prompt + [1] * (length - prompt))
    Dataset.from_dict(data).save_to_disk(str(workdir / "data"))


def run_lorapipe(workdir: Path, steps: int, checkpointing: bool, dtype: str) -> dict:
    import torch
    from datasets import load_from_disk
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from lorapipe.artifacts import RunPaths
    from lorapipe.config import TrainConfig
    from lorapipe.model.prepare import enable_checkpointing
    from lorapipe.train import TrainSetup, train

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(  # bf16 weights: the loop autocasts to bf16
        workdir / "model", dtype=torch.bfloat16 if dtype == "bf16" else torch.float32)
    if checkpointing:  # what the model stage does for train.gradient_checkpointing
        enable_checkpointing(model)
    model = get_peft_model(model, LoraConfig(**LORA))
    cfg = TrainConfig(max_steps=steps, micro_batch_size=MICRO, gradient_accumulation_steps=ACCUM,
                      learning_rate=LR, warmup_steps=0, packing=True,
                      gradient_checkpointing=checkpointing,
                      logging_steps=1, save_steps=10 * steps, max_grad_norm=1.0)
    paths = RunPaths(workdir / f"lorapipe-{checkpointing}-{dtype}-{os.getpid()}")
    setup = TrainSetup(config=cfg, paths=paths, pad_token_id=model.config.pad_token_id,
                       max_length=MAX_LENGTH, config_hash="bench")
    summary = train(model, load_from_disk(str(workdir / "data")), None, setup)
    losses = [json.loads(line).get("loss") for line in paths.metrics.read_text().splitlines()]
    return {"tokens_per_s": summary["tokens_per_s"], "seconds": summary["seconds"],
            "losses": [loss for loss in losses if loss is not None]}


def run_trl(workdir: Path, steps: int, checkpointing: bool, dtype: str) -> dict:
    import torch
    from datasets import load_from_disk
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import SFTConfig, SFTTrainer

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(workdir / "model", dtype=torch.float32)
    args = SFTConfig(
        output_dir=str(workdir / f"trl-{checkpointing}-{dtype}"), per_device_train_batch_size=MICRO,
        gradient_accumulation_steps=ACCUM, max_steps=steps, learning_rate=LR, warmup_steps=0,
        lr_scheduler_type="cosine", max_length=MAX_LENGTH, packing=True,
        completion_only_loss=True, logging_steps=steps, save_strategy="no", report_to="none",
        use_cpu=True, gradient_checkpointing=checkpointing,
        **({} if dtype == "default" else {"bf16": dtype == "bf16"}),
        dataloader_num_workers=0, max_grad_norm=1.0,
        include_num_input_tokens_seen="non_padding", seed=0, disable_tqdm=True,
    )
    data = load_from_disk(str(workdir / "data")).remove_columns("labels")
    trainer = SFTTrainer(model=model, args=args, train_dataset=data,
                         processing_class=AutoTokenizer.from_pretrained(workdir / "model"),
                         peft_config=LoraConfig(**LORA))
    started = time.perf_counter()
    trainer.train()
    seconds = time.perf_counter() - started
    return {"tokens_per_s": trainer.state.num_input_tokens_seen / seconds, "seconds": seconds}


def run_worker(workdir: Path, which: str, steps: int, checkpointing: bool, dtype: str) -> dict:
    flag = "--gradient-checkpointing" if checkpointing else "--no-gradient-checkpointing"
    out = subprocess.run(
        [sys.executable, __file__, "--worker", which, "--workdir", str(workdir),
         "--steps", str(steps), flag, "--dtypes", dtype],
        capture_output=True, text=True, check=False)
    line = [x for x in out.stdout.splitlines() if x.startswith("RESULT ")]
    if out.returncode or not line:
        sys.exit(f"{which} failed:\n{out.stdout[-2000:]}\n{out.stderr[-4000:]}")
    result = json.loads(line[-1][7:])
    print(f"{which}, checkpointing {checkpointing}, {dtype}: {result}", file=sys.stderr)
    return result


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--rows", type=int, default=600)
    parser.add_argument("--vocab-size", type=int, default=32_000,
                        help="rows of the output head (tiny-llama's tokenizer has 2,048)")
    parser.add_argument("--gradient-checkpointing", action=argparse.BooleanOptionalAction,
                        default=None, help="only this setting (default: both)")
    parser.add_argument("--dtypes", nargs="+", default=["fp32"],
                        choices=["fp32", "bf16", "default"],
                        help="compute dtypes to run (bf16: bf16 weights, bf16 autocast; "
                             "default: TRL at its own default, lorapipe at model.dtype auto)")
    parser.add_argument("--worker", choices=["lorapipe", "trl"])
    parser.add_argument("--workdir", type=Path)
    args = parser.parse_args()
    if args.worker:
        dtype = args.dtypes[0]
        if args.worker == "lorapipe" and dtype == "default":
            from lorapipe.model.dtypes import dtype_name, resolve_dtype

            dtype = dtype_name(resolve_dtype("auto", device="cpu"))
        result = (run_lorapipe if args.worker == "lorapipe" else run_trl)(
            args.workdir, args.steps, args.gradient_checkpointing is not False, dtype)
        result["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        print("RESULT " + json.dumps(result))
        return
    settings = ([args.gradient_checkpointing] if args.gradient_checkpointing is not None
                else [True, False])
    results: dict[tuple[str, bool, str], dict] = {}
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        build(workdir, args.rows, args.vocab_size)
        for checkpointing in settings:
            for dtype in args.dtypes:
                for which in ("lorapipe", "trl"):
                    results[which, checkpointing, dtype] = run_worker(
                        workdir, which, args.steps, checkpointing, dtype)
    print(f"{'':9s} {'checkpointing':>13s} {'dtype':>8s} {'tokens/s':>9s} {'seconds':>8s} "
          f"{'peak RSS':>9s}  last loss")
    for (which, checkpointing, dtype), r in results.items():
        last = f"{r['losses'][-1]:.4f}" if r.get("losses") else ""
        print(f"{which:9s} {'on' if checkpointing else 'off':>13s} {dtype:>8s} "
              f"{r['tokens_per_s']:9.0f} {r['seconds']:8.1f} {r['peak_rss_mb']:6.0f} MB  {last}")
    for checkpointing in settings:
        for dtype in args.dtypes:
            ours, theirs = (results["lorapipe", checkpointing, dtype],
                            results["trl", checkpointing, dtype])
            print(f"checkpointing {'on' if checkpointing else 'off'}, {dtype}: lorapipe / TRL "
                  f"{ours['tokens_per_s'] / theirs['tokens_per_s']:.2f}x throughput, "
                  f"{ours['peak_rss_mb'] / theirs['peak_rss_mb']:.2f}x peak RSS")
        if {"fp32", "bf16"} <= set(args.dtypes):
            fp32, bf16 = (results["lorapipe", checkpointing, d] for d in ("fp32", "bf16"))
            gap = max(abs(a - b) for a, b in zip(fp32["losses"], bf16["losses"], strict=True))
            print(f"lorapipe bf16 / fp32 (checkpointing {'on' if checkpointing else 'off'}): "
                  f"{bf16['tokens_per_s'] / fp32['tokens_per_s']:.3f}x throughput; loss curves "
                  f"differ by at most {gap:.4f}")
    if len(settings) == 2 and "fp32" in args.dtypes:
        # The comparison a user with a memory budget makes: TRL at its default (checkpointing
        # on) against lorapipe's fastest setting that needs no more memory.
        trl = results["trl", True, "fp32"]
        fitting = [(checkpointing, r) for (which, checkpointing, dtype), r in results.items()
                   if which == "lorapipe" and dtype == "fp32"
                   and r["peak_rss_mb"] <= trl["peak_rss_mb"]]
        if fitting:
            checkpointing, best = max(fitting, key=lambda item: item[1]["tokens_per_s"])
            print(f"within TRL's peak RSS ({trl['peak_rss_mb']:.0f} MB): lorapipe "
                  f"(checkpointing {'on' if checkpointing else 'off'}) "
                  f"{best['tokens_per_s'] / trl['tokens_per_s']:.2f}x TRL's throughput at "
                  f"{best['peak_rss_mb']:.0f} MB")
        else:
            print("within TRL's peak RSS: no lorapipe setting fits")


if __name__ == "__main__":
    main()
