"""Packing on an Alpaca length distribution at max_length 1024: tokens/s packed vs padded,
and lorapipe packed vs TRL's ``packing=True`` on the same work.

Run:  python tests/bench/packing.py [--samples 184] [--alpaca-json PATH] [--all]
          [--repeat N] [--no-trl] [--gradient-checkpointing] [--vocab-size N]
Needs TRL for the comparison (a bench requirement, not a lorapipe dependency):
      pip install trl==1.16.0

The lengths. No model hub is reachable here and no package registry ships Stanford
Alpaca's ``alpaca_data.json`` (52,002 records). The nearest real data a registry ships is
``data/alpaca_en_demo.json`` in LLaMA-Factory's source distribution on PyPI
(``llamafactory==0.9.4``): 999 Alpaca records — Alpaca's own instructions and inputs with
the GPT-4 answers of "Alpaca-GPT4", which are 2–3× longer than the text-davinci-003
answers of Stanford's file. The script downloads that sdist once with pip and caches the
file in ``$LORAPIPE_TEST_CACHE`` (default ``~/.cache/lorapipe-tests``); ``--alpaca-json``
takes Stanford's ``alpaca_data.json`` (or alpaca-cleaned, or any Alpaca-format list)
instead. Every record goes through lorapipe's own prepare path — the Alpaca schema
(``instruction``, a blank line and ``input`` as the user turn, ``output`` as the reply) and
the built-in ``llama3`` chat template with the real Llama 3 tokenizer (from llama.cpp's
vocab file, tests/llama_cpp_material.py) — which gives each record's length and its
trained (reply) positions. Default data: mean 173 tokens, median 135, max 587, 84% of the
tokens trained (Stanford's records are shorter: mean ~80 tokens on a 1,800-record sample).

The work. The sample is the first ``--samples`` records of a seeded shuffle, extended to
the next count for which both the records and lorapipe's packed rows fill whole optimizer
steps, so no run drops a remainder (default 184 records, 32,270 tokens; the three default
runs take ~6 minutes on 2 quiet cores, 10–20 under load, a third or more of it TRL's,
which ``--no-trl`` skips). The token ids are random (throughput does not depend on them);
lengths and masks are the records'. The model is train_throughput.py's random Llama
(hidden 512, 6 layers, a 32,000-token vocabulary), not tiny-llama: at hidden 128 with a
2,048-token vocabulary per-call overhead and the 1024² attention of a packed row would
outweigh the matmuls a real model spends its time in. Even at hidden 512 attention over a
1,024-token row costs about a third of a layer's matmuls (on a 7B model, ~4%), so on this
model packing's gain over length-grouped padding is understated. Both tools train with the
same LoRA (r=16, all linear layers), fp32, learning rate and effective batch: micro
batches of 4 rows × 2 accumulation steps, a row being one example (padded) or a pack of
examples of at most 1,024 tokens (packed). Gradient checkpointing is off in both
(``--gradient-checkpointing``: on in both). Each run is its own process.

- lorapipe packed vs padded: one epoch over the same records each, through ``train()``
  with ``train.packing`` true / false: batching.py's ``pack`` (worst-fit decreasing) and
  ``collate`` (packed rows carry per-example position ids, from which transformers builds
  a block-diagonal causal mask; padded micro batches are padded to their longest
  example). Padded uses ``group_by_length`` (lorapipe's default: little padding); ``--all``
  adds padded in plain shuffled order (what padding costs without it). The same tokens
  are trained either way, packed in far fewer optimizer steps of larger micro batches
  (default sample: 4 steps of 4 × ~1,000 tokens per micro batch vs 23 of 4 × ~175).
  Printed: tokens/s (non-pad input tokens) and trained tokens/s (the reply tokens the
  loss covers) over the training loop's wall time, steps, padding, peak RSS, and tokens
  per CPU-second of the training call (all threads: less moved by other work on the
  machine than wall time, though not immune to it).
- lorapipe packed vs TRL ``SFTTrainer(packing=True)``: the same records (pre-tokenized,
  with TRL's ``completion_mask`` so it trains the same reply tokens), the same number of
  optimizer steps (the packed lorapipe run's) of the same number of rows of at most 1,024
  tokens. TRL's default ``packing_strategy="bfd"`` (best-fit decreasing, overlong
  examples truncated) forces ``padding_free``: the 4 rows of a micro batch are
  concatenated into one sequence of up to 4,096 tokens with position ids restarting per
  example and no attention mask. On a CPU there is no varlen flash-attention kernel, so
  the model runs SDPA with the block-diagonal mask transformers derives from those
  position ids, over the whole flattened sequence. That is TRL's packing as a user gets it
  here: we set nothing beyond ``packing=True`` and fp32 (``bf16=False``: SFTConfig
  defaults to bf16 autocast). ``--all`` adds TRL with one row per micro batch (× 8
  accumulation: the same rows per step), which flattens nothing. TRL's tokens/s counts
  the tokens it reports as seen (``non_padding``; there is no padding) over
  ``trainer.train()``'s wall time, as train_throughput.py does.

The machine's load average is printed (at the start, and after each run): other work on
the 2 cores moves every figure, by up to 3× between runs on this project's machines, the
padded run's many small micro batches the most.
``--repeat N`` runs every configuration N times in turn and keeps each one's fastest run.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

import numpy as np

MAX_LENGTH, MICRO, ACCUM, LR = 1024, 4, 2, 1e-4
LORA = dict(r=16, lora_alpha=32, lora_dropout=0.0, target_modules="all-linear",
            task_type="CAUSAL_LM")
LLAMAFACTORY = "0.9.4"  # its sdist carries data/alpaca_en_demo.json
MEMBER = f"llamafactory-{LLAMAFACTORY}/data/alpaca_en_demo.json"
TESTS = Path(__file__).resolve().parent.parent

# name → (tool, packing, group_by_length, micro batch, accumulation, run by default)
RUNS = {
    "lorapipe packed": ("lorapipe", True, True, MICRO, ACCUM, True),
    "lorapipe padded, grouped": ("lorapipe", False, True, MICRO, ACCUM, True),
    "lorapipe padded, shuffled": ("lorapipe", False, False, MICRO, ACCUM, False),
    "trl packed (bfd)": ("trl", True, False, MICRO, ACCUM, True),
    "trl packed, 1 row/micro": ("trl", True, False, 1, MICRO * ACCUM, False),
}


def default_alpaca() -> Path:
    """LLaMA-Factory's Alpaca sample, from its PyPI sdist (downloaded once, cached)."""
    root = os.environ.get("LORAPIPE_TEST_CACHE") or Path.home() / ".cache" / "lorapipe-tests"
    target = Path(root) / f"llamafactory-{LLAMAFACTORY}" / "alpaca_en_demo.json"
    if target.is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
        subprocess.run([sys.executable, "-m", "pip", "download", "--quiet", "--no-deps",
                        "--no-binary", ":all:", f"llamafactory=={LLAMAFACTORY}", "-d", tmp],
                       check=True)
        with tarfile.open(next(Path(tmp).glob("llamafactory-*.tar.gz"))) as sdist:
            data = sdist.extractfile(MEMBER).read()
        staged = Path(tmp) / target.name
        staged.write_bytes(data)
        staged.replace(target)
    return target


def encode(path: Path) -> list[list[bool]]:
    """Each record's trainable mask (as long as the record) as lorapipe's prepare makes it:
    Alpaca schema, built-in ``llama3`` template, the real Llama 3 tokenizer."""
    sys.path.insert(0, str(TESTS))
    from llama_cpp_material import real_tokenizer
    from transformers import AutoTokenizer

    from lorapipe.data.schemas import to_messages
    from lorapipe.plugins.templates.llama import Llama3Template

    tokenizer = AutoTokenizer.from_pretrained(real_tokenizer("llama3"))
    records = json.loads(path.read_text(encoding="utf-8"))
    conversations = [to_messages(record, "alpaca", {}) for record in records]
    return [e.trainable for e in Llama3Template().encode_batch(conversations, tokenizer)]


def sample(masks: list[list[bool]], samples: int) -> tuple[list[list[bool]], int]:
    """The first ``samples`` or more masks of a seeded shuffle (truncated to max_length),
    as many as make both the records and their packed rows fill whole optimizer steps
    (all of them if none does); and the number of packed rows."""
    from lorapipe.train.batching import pack

    order = np.random.default_rng(0).permutation(len(masks))
    per_step = MICRO * ACCUM
    count = -(-max(samples, per_step) // per_step) * per_step
    while True:
        chosen = [masks[i][:MAX_LENGTH] for i in order[:count]]
        rows = len(pack([len(m) for m in chosen], MAX_LENGTH))
        if rows % per_step == 0 or count >= len(masks):
            return chosen, rows
        count += per_step


def build(workdir: Path, chosen: list[list[bool]], vocab_size: int) -> None:
    """The model (random, seeded) and the records as a pre-tokenized dataset with
    ``labels`` (lorapipe) and ``completion_mask`` (TRL)."""
    import torch
    from datasets import Dataset
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    from lorapipe.model.source import resolve_model_path

    tokenizer = AutoTokenizer.from_pretrained(resolve_model_path("tiny-llama"))
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=max(vocab_size, len(tokenizer)), hidden_size=512,
                         intermediate_size=1376, num_hidden_layers=6, num_attention_heads=8,
                         num_key_value_heads=4, max_position_embeddings=MAX_LENGTH,
                         pad_token_id=tokenizer.pad_token_id)
    LlamaForCausalLM(config).save_pretrained(workdir / "model")
    tokenizer.save_pretrained(workdir / "model")
    rng = np.random.default_rng(0)
    data: dict[str, list] = {"input_ids": [], "labels": [], "completion_mask": []}
    for mask in chosen:
        ids = rng.integers(10, config.vocab_size, size=len(mask)).tolist()
        data["input_ids"].append(ids)
        data["labels"].append([t if m else -100 for t, m in zip(ids, mask, strict=True)])
        data["completion_mask"].append([int(m) for m in mask])
    Dataset.from_dict(data).save_to_disk(str(workdir / "data"))


def run_lorapipe(workdir: Path, name: str, checkpointing: bool) -> dict:
    import torch
    from datasets import load_from_disk
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from lorapipe.artifacts import RunPaths
    from lorapipe.config import TrainConfig
    from lorapipe.model.prepare import enable_checkpointing
    from lorapipe.train import TrainSetup, train

    _, packing, grouped, micro, accum, _ = RUNS[name]
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(workdir / "model", dtype=torch.float32)
    if checkpointing:  # what the model stage does for train.gradient_checkpointing
        enable_checkpointing(model)
    model = get_peft_model(model, LoraConfig(**LORA))
    # One metrics line for the whole run: its token count and padding are the run's.
    cfg = TrainConfig(epochs=1, micro_batch_size=micro, gradient_accumulation_steps=accum,
                      learning_rate=LR, warmup_steps=0, packing=packing,
                      group_by_length=grouped, gradient_checkpointing=checkpointing,
                      logging_steps=10**6, save_steps=10**6, max_grad_norm=1.0)
    paths = RunPaths(workdir / f"lorapipe-{packing}-{grouped}-{os.getpid()}")
    setup = TrainSetup(config=cfg, paths=paths, pad_token_id=model.config.pad_token_id,
                       max_length=MAX_LENGTH, config_hash="bench")
    cpu = time.process_time()
    summary = train(model, load_from_disk(str(workdir / "data")), None, setup)
    cpu = time.process_time() - cpu
    records = [json.loads(line) for line in paths.metrics.read_text().splitlines()]
    line = [r for r in records if "loss" in r][-1]
    seconds = summary["seconds"]
    return {"tokens_per_s": summary["tokens_per_s"], "seconds": seconds,
            "tokens": round(line["tokens_per_s"] * line["seconds"]),
            "trained_per_s": summary["trained_tokens"] / seconds,
            "trained": summary["trained_tokens"], "steps": summary["steps"],
            "padding": line["padding_fraction"], "loss": line["loss"], "cpu_seconds": cpu}


def run_trl(workdir: Path, name: str, checkpointing: bool, steps: int) -> dict:
    import torch
    from datasets import load_from_disk
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import SFTConfig, SFTTrainer

    _, packing, _, micro, accum, _ = RUNS[name]
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(workdir / "model", dtype=torch.float32)
    args = SFTConfig(
        output_dir=str(workdir / f"trl-{micro}"), per_device_train_batch_size=micro,
        gradient_accumulation_steps=accum, max_steps=steps, learning_rate=LR, warmup_steps=0,
        lr_scheduler_type="cosine", max_length=MAX_LENGTH, packing=packing,
        completion_only_loss=True, logging_steps=steps, save_strategy="no", report_to="none",
        use_cpu=True, bf16=False, gradient_checkpointing=checkpointing,
        dataloader_num_workers=0, max_grad_norm=1.0,
        include_num_input_tokens_seen="non_padding", seed=0, disable_tqdm=True,
    )
    data = load_from_disk(str(workdir / "data")).remove_columns("labels")
    trainer = SFTTrainer(model=model, args=args, train_dataset=data,
                         processing_class=AutoTokenizer.from_pretrained(workdir / "model"),
                         peft_config=LoraConfig(**LORA))
    started, cpu = time.perf_counter(), time.process_time()
    trainer.train()
    seconds, cpu = time.perf_counter() - started, time.process_time() - cpu
    tokens = int(trainer.state.num_input_tokens_seen)
    losses = [r["loss"] for r in trainer.state.log_history if "loss" in r]
    return {"tokens_per_s": tokens / seconds, "seconds": seconds, "tokens": tokens,
            "steps": trainer.state.global_step, "padding": 0.0,
            "rows": len(trainer.train_dataset), "loss": losses[-1] if losses else None,
            "cpu_seconds": cpu}


def run_worker(workdir: Path, name: str, checkpointing: bool, steps: int) -> dict:
    flag = "--gradient-checkpointing" if checkpointing else "--no-gradient-checkpointing"
    out = subprocess.run(
        [sys.executable, __file__, "--worker", name, "--workdir", str(workdir),
         "--steps", str(steps), flag], capture_output=True, text=True, check=False)
    line = [x for x in out.stdout.splitlines() if x.startswith("RESULT ")]
    if out.returncode or not line:
        sys.exit(f"{name} failed:\n{out.stdout[-2000:]}\n{out.stderr[-4000:]}")
    result = json.loads(line[-1][7:])
    result["load"] = os.getloadavg()[0]
    print(f"{name}: {result}", file=sys.stderr)
    return result


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--samples", type=int, default=184,
                        help="records to train on (at least; see the docstring)")
    parser.add_argument("--alpaca-json", type=Path,
                        help="an Alpaca-format JSON list, e.g. Stanford's alpaca_data.json "
                             "(default: LLaMA-Factory's sample from PyPI, cached)")
    parser.add_argument("--all", action="store_true",
                        help="also padded in shuffled order and TRL with 1 row per micro batch")
    parser.add_argument("--no-trl", action="store_true", help="lorapipe's runs only")
    parser.add_argument("--repeat", type=int, default=1,
                        help="run every configuration this many times, in turn, and keep "
                             "each one's fastest run (the machine is shared)")
    parser.add_argument("--gradient-checkpointing", action=argparse.BooleanOptionalAction,
                        default=False, help="in both tools (default: off in both)")
    parser.add_argument("--vocab-size", type=int, default=32_000,
                        help="rows of the output head (tiny-llama's tokenizer has 2,048)")
    parser.add_argument("--worker", choices=list(RUNS))
    parser.add_argument("--workdir", type=Path)
    parser.add_argument("--steps", type=int, default=0)
    args = parser.parse_args()
    if args.worker:
        if RUNS[args.worker][0] == "lorapipe":
            result = run_lorapipe(args.workdir, args.worker, args.gradient_checkpointing)
        else:
            result = run_trl(args.workdir, args.worker, args.gradient_checkpointing, args.steps)
        result["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        print("RESULT " + json.dumps(result))
        return
    source = args.alpaca_json or default_alpaca()
    masks = encode(source)
    chosen, rows = sample(masks, args.samples)
    names = [name for name, run in RUNS.items()
             if (run[5] or args.all) and not (args.no_trl and run[0] == "trl")]
    results: dict[str, dict] = {}
    load = os.getloadavg()[0]
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        build(workdir, chosen, args.vocab_size)
        for _ in range(args.repeat):
            for name in names:
                steps = results.get("lorapipe packed", {}).get("steps", 0)
                result = run_worker(workdir, name, args.gradient_checkpointing, steps)
                if result["tokens_per_s"] > results.get(name, {}).get("tokens_per_s", 0):
                    results[name] = result
    lengths = np.array([len(m) for m in chosen])
    print(f"lengths: {source} ({len(masks)} records, mean "
          f"{np.mean([len(m) for m in masks]):.0f} tokens; Llama 3 tokenizer, lorapipe's "
          "llama3 template)")
    print(f"sample: {len(chosen)} records, {lengths.sum():,} tokens "
          f"({sum(map(sum, chosen)):,} trained), mean {lengths.mean():.0f}, median "
          f"{np.median(lengths):.0f}, p90 {np.percentile(lengths, 90):.0f}, max "
          f"{lengths.max()}; {rows} packed rows (lorapipe)")
    print(f"max_length {MAX_LENGTH}; {MICRO * ACCUM} rows per optimizer step; gradient "
          f"checkpointing {'on' if args.gradient_checkpointing else 'off'}; fp32; load "
          f"average {load:.1f} at the start; best of {args.repeat} run(s) each")
    print(f"{'':26s} {'micro':>5s} {'steps':>5s} {'tokens':>7s} {'tokens/s':>8s} "
          f"{'trained/s':>9s} {'padding':>7s} {'seconds':>7s} {'tok/CPU-s':>9s} "
          f"{'peak RSS':>9s} {'load':>5s}")
    for name, r in results.items():
        micro, accum = RUNS[name][3:5]
        trained = f"{r['trained_per_s']:9.0f}" if "trained_per_s" in r else f"{'':9s}"
        print(f"{name:26s} {f'{micro}x{accum}':>5s} {r['steps']:5d} {r['tokens']:7d} "
              f"{r['tokens_per_s']:8.0f} {trained} {r['padding']:7.1%} {r['seconds']:7.1f} "
              f"{r['tokens'] / r['cpu_seconds']:9.0f} {r['peak_rss_mb']:6.0f} MB "
              f"{r['load']:5.1f}")
    packed = results["lorapipe packed"]
    for name in names[1:]:
        other = results[name]
        per_cpu = ((packed["tokens"] / packed["cpu_seconds"])
                   / (other["tokens"] / other["cpu_seconds"]))
        ratio = (f"{packed['tokens_per_s'] / other['tokens_per_s']:.2f}x tokens/s "
                 f"({per_cpu:.2f}x tokens per CPU-second)")
        if "trained_per_s" in other:
            ratio += f", {packed['trained_per_s'] / other['trained_per_s']:.2f}x trained tokens/s"
        else:
            ratio += f" (TRL packed {other['rows']} rows, lorapipe {rows})"
        print(f"lorapipe packed / {name}: {ratio}")


if __name__ == "__main__":
    main()
