"""DPO with LoRA on a Llama-shaped model: lorapipe against TRL's ``DPOTrainer`` + PEFT on
the same CPU work.

Run:  python tests/bench/dpo_train.py [--pairs 64] [--repeat N] [--no-group-by-length]
Needs TRL for the comparison (a bench requirement, not a lorapipe dependency):
      pip install trl==1.16.0

The model is a seeded random Llama (transformers' ``llama``: hidden 512, 4 layers,
intermediate 1376, 8 heads over 4 key/value heads, 32,000-token vocabulary; 44 M
parameters, 33 M of them in the untied embeddings and head). The data is ``--pairs``
preference pairs of plain text made of one-token words of tiny-llama's tokenizer: a
64-word prompt and two replies of 64 to 128 words, so a side is 130 to 194 tokens with
the BOS and EOS. Only the replies (and their EOS) are trained. TRL tokenizes the text
itself (its ``_prepare_dataset`` always does); lorapipe gets the ids that tokenization
gives, masked on the prompt, and the TRL worker checks that its prepared prompt, chosen
and rejected ids are exactly those. Both train the same LoRA (r=16, alpha 32, no dropout)
on q/k/v/o/gate/up/down, in fp32, without gradient checkpointing, 4 pairs per micro batch
× 2 accumulation steps, one epoch, the same learning rate and cosine decay, with the
sigmoid DPO loss at beta 0.1 and the reference as the model with its adapters off.

- lorapipe: the model stage (``build_trainable_model``: the targets above, quantizer
  ``none``) and the training loop (``train()``, objective ``dpo``). It groups pairs of
  similar length into a micro batch by default (``train.group_by_length``), which pads
  less; ``--no-group-by-length`` trains them in a plain shuffled order, as TRL does.
- TRL: ``DPOTrainer`` with the same ``LoraConfig``.

Tokens are the real (non-pad) tokens of both sides of every pair trained, prompts
included, counted from the same ids for both. Printed per tool: tokens/s over the
training call's wall time and over the whole worker process (imports, model load,
TRL's tokenization, training), tokens per CPU-second of the training call (all threads),
the loss at step 1 (both ln 2 = 0.693: the adapters start as a no-op, so the policy is
the reference) and at the last step, and the process's peak RSS. Each run is its own
process; the load average is printed beside each: other work on the 2 cores moves every
figure. ``--repeat N`` runs both N times in turn and keeps each one's fastest run.
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

MICRO, ACCUM, LR, R, BETA = 4, 2, 1e-4, 16, 0.1
PROMPT_WORDS, REPLY_WORDS = 64, (64, 128)
TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
TOOLS = ("lorapipe", "trl")


def build(workdir: Path, pairs: int) -> None:
    """The model (random, seeded) with tiny-llama's tokenizer files; the pairs as text
    (TRL) and as the ids TRL's tokenization gives them (lorapipe)."""
    import numpy as np
    import torch
    from datasets import Dataset
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    from lorapipe.model.source import resolve_model_path

    tokenizer = AutoTokenizer.from_pretrained(resolve_model_path("tiny-llama"))
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=32_000, hidden_size=512, intermediate_size=1376,
                         num_hidden_layers=4, num_attention_heads=8, num_key_value_heads=4,
                         max_position_embeddings=1024, pad_token_id=tokenizer.pad_token_id,
                         bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id)
    LlamaForCausalLM(config).save_pretrained(workdir / "model")
    tokenizer.save_pretrained(workdir / "model")
    # " word" for each of these is one token, so word counts are token counts and no
    # token spans the prompt/reply boundary
    words = sorted(piece[1:] for piece in tokenizer.get_vocab()
                   if piece.startswith("Ġ") and piece[1:].isascii() and piece[1:].isalpha())
    rng = np.random.default_rng(0)

    def text(n: int) -> str:
        return "".join(" " + word for word in rng.choice(words, n))

    texts: dict[str, list[str]] = {"prompt": [], "chosen": [], "rejected": []}
    ids: dict[str, list] = {k: [] for k in ("input_ids", "labels", "rejected_input_ids",
                                            "rejected_labels", "kind")}
    for _ in range(pairs):
        prompt = text(PROMPT_WORDS)
        prompt_ids = tokenizer(prompt)["input_ids"]  # BOS + the words, as TRL tokenizes it
        texts["prompt"].append(prompt)
        for side, column in (("", "chosen"), ("rejected_", "rejected")):
            reply = text(int(rng.integers(REPLY_WORDS[0], REPLY_WORDS[1] + 1)))
            texts[column].append(reply)  # TRL appends the EOS itself
            full = tokenizer(prompt + reply + tokenizer.eos_token)["input_ids"]
            assert full[:len(prompt_ids)] == prompt_ids, "the prompt's tokens changed"
            ids[f"{side}input_ids"].append(full)
            ids[f"{side}labels"].append([-100] * len(prompt_ids) + full[len(prompt_ids):])
        ids["kind"].append("preference")
    Dataset.from_dict(ids).save_to_disk(str(workdir / "data"))
    Dataset.from_dict(texts).save_to_disk(str(workdir / "text"))


def count_tokens(data) -> int:  # noqa: ANN001 - a datasets.Dataset
    """Real tokens of both sides of every pair."""
    return sum(len(ids) for column in ("input_ids", "rejected_input_ids") for ids in data[column])


def run_lorapipe(workdir: Path, group_by_length: bool) -> dict:
    import torch
    from datasets import load_from_disk

    from lorapipe.config import validate_config
    from lorapipe.context import RunContext
    from lorapipe.model.adapters import build_trainable_model
    from lorapipe.plan import build_plan
    from lorapipe.train import TrainSetup, train

    data = load_from_disk(str(workdir / "data"))
    (workdir / "unused.jsonl").write_text("{}\n")  # the data is already tokenized
    longest = max(len(ids) for c in ("input_ids", "rejected_input_ids") for ids in data[c])
    config = validate_config({
        "model": {"name_or_path": str(workdir / "model"), "quantizer": "none",
                  "dtype": "fp32"},
        "adapter": {"r": R, "alpha": 2 * R, "dropout": 0.0},
        "data": {"loader": {"name": "jsonl", "path": str(workdir / "unused.jsonl")},
                 "max_length": longest},
        "train": {"objective": {"name": "dpo", "beta": BETA, "loss_type": "sigmoid"},
                  "epochs": 1, "micro_batch_size": MICRO, "gradient_accumulation_steps": ACCUM,
                  "learning_rate": LR, "lr_scheduler": "cosine", "warmup_steps": 0,
                  "gradient_checkpointing": False, "group_by_length": group_by_length,
                  "logging_steps": 1, "save_steps": 10**6, "max_grad_norm": 1.0, "seed": 0},
        "output_dir": str(workdir / f"lorapipe-{os.getpid()}"),
    })
    ctx = RunContext(build_plan(config))
    torch.manual_seed(0)
    model, report = build_trainable_model(ctx.model_setup, gradient_checkpointing=False,
                                          report_path=workdir / "model_report.json")
    assert sorted(report["targets"]["modules"]) == sorted(TARGETS), report["targets"]
    setup = TrainSetup(config=config.train, paths=ctx.paths,
                       pad_token_id=model.config.pad_token_id, max_length=longest,
                       config_hash="bench")
    cpu = time.process_time()
    summary = train(model, data, None, setup)
    cpu = time.process_time() - cpu
    records = [json.loads(line) for line in ctx.paths.metrics.read_text().splitlines()]
    losses = [r["loss"] for r in records if "loss" in r and "event" not in r]
    tokens = count_tokens(data)
    return {"tokens_per_s": tokens / summary["seconds"], "seconds": summary["seconds"],
            "tokens": tokens, "steps": summary["steps"], "first_loss": losses[0],
            "loss": losses[-1], "cpu_seconds": cpu,
            "trainable": report["parameters"]["trainable"]}


def run_trl(workdir: Path, group_by_length: bool) -> dict:
    import torch
    from datasets import load_from_disk
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import DPOConfig, DPOTrainer

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(workdir / "model", dtype=torch.float32)
    args = DPOConfig(
        output_dir=str(workdir / "trl"), per_device_train_batch_size=MICRO,
        gradient_accumulation_steps=ACCUM, num_train_epochs=1, learning_rate=LR,
        warmup_steps=0, lr_scheduler_type="cosine", beta=BETA, loss_type=["sigmoid"],
        max_length=None, logging_steps=1, save_strategy="no", report_to=[], use_cpu=True,
        bf16=False, gradient_checkpointing=False, dataloader_num_workers=0,
        max_grad_norm=1.0, seed=0, disable_tqdm=True,
    )
    lora = LoraConfig(r=R, lora_alpha=2 * R, lora_dropout=0.0, target_modules=TARGETS,
                      task_type="CAUSAL_LM")
    trainer = DPOTrainer(model=model, args=args, peft_config=lora,
                         train_dataset=load_from_disk(str(workdir / "text")),
                         processing_class=AutoTokenizer.from_pretrained(workdir / "model"))
    ours, theirs = load_from_disk(str(workdir / "data")), trainer.train_dataset
    for i in range(len(ours)):  # the same pairs, token for token, with the same mask
        row, prompt = theirs[i], len(theirs[i]["prompt_ids"])
        for side, column in (("", "chosen_ids"), ("rejected_", "rejected_ids")):
            assert ours[i][f"{side}input_ids"] == row["prompt_ids"] + row[column], i
            assert ours[i][f"{side}labels"] == [-100] * prompt + row[column], i
    trainable = sum(p.numel() for p in trainer.model.parameters() if p.requires_grad)
    started, cpu = time.perf_counter(), time.process_time()
    trainer.train()
    seconds, cpu = time.perf_counter() - started, time.process_time() - cpu
    tokens = count_tokens(ours)
    losses = [r["loss"] for r in trainer.state.log_history if "loss" in r]
    return {"tokens_per_s": tokens / seconds, "seconds": seconds, "tokens": tokens,
            "steps": trainer.state.global_step, "first_loss": losses[0], "loss": losses[-1],
            "cpu_seconds": cpu, "trainable": trainable}


def run_worker(workdir: Path, tool: str, group_by_length: bool) -> dict:
    flag = "--group-by-length" if group_by_length else "--no-group-by-length"
    started = time.perf_counter()
    out = subprocess.run([sys.executable, __file__, "--worker", tool, "--workdir", str(workdir),
                          flag], capture_output=True, text=True, check=False)
    process_seconds = time.perf_counter() - started
    line = [x for x in out.stdout.splitlines() if x.startswith("RESULT ")]
    if out.returncode or not line:
        sys.exit(f"{tool} failed:\n{out.stdout[-2000:]}\n{out.stderr[-4000:]}")
    result = json.loads(line[-1][7:])
    result["process_seconds"] = process_seconds
    result["load"] = os.getloadavg()[0]
    print(f"{tool}: {result}", file=sys.stderr)
    return result


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--pairs", type=int, default=64)
    parser.add_argument("--repeat", type=int, default=1)
    parser.add_argument("--group-by-length", action=argparse.BooleanOptionalAction,
                        default=True, help="lorapipe's train.group_by_length (default on)")
    parser.add_argument("--worker", choices=TOOLS)
    parser.add_argument("--workdir", type=Path)
    args = parser.parse_args()
    if args.worker:
        result = (run_lorapipe if args.worker == "lorapipe" else run_trl)(
            args.workdir, args.group_by_length)
        result["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        print("RESULT " + json.dumps(result))
        return
    if args.pairs % (MICRO * ACCUM):
        parser.error(f"--pairs must be a multiple of {MICRO * ACCUM} (lorapipe drops an "
                     "incomplete last step, TRL trains it)")
    results: dict[str, dict] = {}
    load = os.getloadavg()[0]
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        build(workdir, args.pairs)
        for _ in range(args.repeat):
            for tool in TOOLS:
                result = run_worker(workdir, tool, args.group_by_length)
                if result["tokens_per_s"] > results.get(tool, {}).get("tokens_per_s", 0):
                    results[tool] = result
    tokens = results["trl"]["tokens"]
    print(f"Llama-shaped model (hidden 512, 4 layers, 32,000 vocab); {args.pairs} pairs, "
          f"{tokens:,} tokens (both sides); micro batch {MICRO} pairs × {ACCUM}; LoRA r={R} "
          f"on every linear layer; fp32; sigmoid DPO, beta {BETA}; lorapipe group_by_length "
          f"{'on' if args.group_by_length else 'off'}; load average {load:.1f} at the start; "
          f"best of {args.repeat} run(s) each")
    print(f"{'':9s} {'trainable':>9s} {'steps':>5s} {'tokens/s':>8s} {'seconds':>7s} "
          f"{'tok/CPU-s':>9s} {'process':>7s} {'tok/s':>6s} {'loss@1':>7s} {'loss':>7s} "
          f"{'peak RSS':>9s} {'load':>5s}")
    for tool, r in results.items():
        print(f"{tool:9s} {r['trainable']:9,d} {r['steps']:5d} {r['tokens_per_s']:8.0f} "
              f"{r['seconds']:7.1f} {r['tokens'] / r['cpu_seconds']:9.0f} "
              f"{r['process_seconds']:6.1f}s {r['tokens'] / r['process_seconds']:6.0f} "
              f"{r['first_loss']:7.4f} {r['loss']:7.4f} {r['peak_rss_mb']:6.0f} MB "
              f"{r['load']:5.1f}")
    ours, theirs = results["lorapipe"], results["trl"]
    print(f"lorapipe / TRL: {ours['tokens_per_s'] / theirs['tokens_per_s']:.2f}x tokens/s "
          f"(training), {theirs['process_seconds'] / ours['process_seconds']:.2f}x tokens/s "
          f"(whole process), {ours['peak_rss_mb'] / theirs['peak_rss_mb']:.2f}x peak RSS")


if __name__ == "__main__":
    main()
