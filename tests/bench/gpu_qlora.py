"""QLoRA of a Llama-3.1-8B-shaped model on one GPU: lorapipe (as is, and with Liger's
kernels) against TRL's SFTTrainer, in tokens/s and peak GPU memory.

Run:  python tests/bench/gpu_qlora.py [--warmup-steps 3] [--steps 15] [--json results.json]
      python tests/bench/gpu_qlora.py --smoke   # same code paths, tiny model (CPU without GPU)

Sized for one H200 in under 8 minutes, offline. The model has Llama-3.1-8B's shape (32
layers, hidden 4096, MLP 14336, 32 query and 8 KV heads, a 128,256-token vocabulary, llama3
RoPE at theta 500,000) and random weights: the shape sets speed and memory, the weights do
not. It is saved once as a bf16 safetensors model directory, so every contender loads it
the way users load a checkpoint: 4-bit NF4 with double quantization and bf16 compute
(bitsandbytes). Its tokenizer is lorapipe's built-in tiny-llama one (Llama-3 chat
template), since none can be downloaded: token ids stay below 2,048, but the embedding and
output head have the real 128,256 rows, and those are what speed and memory depend on.

Data: Alpaca-like single-turn conversations from a seeded generator (prompt ~20-120 tokens,
reply ~50-300), the same for every contender: ``messages`` JSONL for lorapipe, conversational
prompt/completion for TRL, so both train on the reply only.

Every contender runs in its own process (peak memory is its own) with LoRA r16, alpha 32,
dropout 0.05 on every linear layer of the decoder, micro batch 2 × accumulation 4, bf16,
non-reentrant gradient checkpointing, paged 8-bit AdamW and max length 2048:

- ``lorapipe``: its real CLI (``prepare``, then ``train``), its defaults otherwise
  (attention auto: SDPA unless flash-attn is installed; length-grouped batches);
- ``lorapipe+liger``: the same plus ``train.kernels: liger``;
- ``trl``: SFTTrainer with PEFT and ``attn_implementation="sdpa"``, its defaults otherwise
  (random batches: ``train_sampling_strategy="group_by_length"`` is not its default, so
  its batches carry more padding, which costs time but is not counted as tokens).

Tokens/s counts the real (non-pad) input tokens of the steps after the warmup over their
wall time. lorapipe logs every step to metrics.jsonl with its tokens/s and wall seconds;
TRL's steps are timed by a callback. Peak memory: the process's
``max_memory_allocated`` and ``max_memory_reserved`` (lorapipe logs them as
``cuda_peak_allocated_bytes`` and ``cuda_peak_reserved_bytes``). Peak RSS on the CPU.
``--smoke`` on a machine without a GPU trains plain AdamW in fp32 and skips Liger.

Wheels the bench needs beyond a CUDA build of torch (which brings triton, filelock, jinja2,
markupsafe, networkx, sympy, mpmath, typing_extensions, fsspec and the nvidia-* libraries,
but not numpy; fsspec is listed anyway, as datasets caps its version), for CPython 3.11 on
manylinux x86_64, at the versions of this repository's environment (trl and liger-kernel:
the newest). tests/bench/gpu_requirements.txt pins them for ``pip download`` where there is
a network and ``pip install --no-index --find-links`` on the GPU machine. Sizes in MB:

  pyarrow 26.0.1            55.02  bitsandbytes 0.50.2       43.14
  numpy 2.4.6               16.92  transformers 5.24.0       13.55  pandas 3.1.1              12.36
  hf-xet 1.8.0               4.29  tokenizers 0.23.3          3.40  pydantic-core 2.50.5       2.26
  sentencepiece 0.2.3        1.71  pygments 2.21.0            1.25  trl 1.16.0                 0.95
  liger-kernel 0.8.5         0.91  huggingface-hub 2.4.0      0.86  peft 0.21.2                0.84
  pyyaml 6.0.4               0.83  regex 2026.11.19           0.81  datasets 5.2.0             0.61
  safetensors 0.8.0          0.52  pydantic 2.14.4            0.49  xxhash 4.1.0               0.47
  accelerate 1.15.0          0.39  tzdata 2026.6              0.35  protobuf 7.36.2            0.34
  rich 15.0.0                0.31  charset-normalizer 3.5.3   0.26  lorapipe 0.1.0             0.23
  fsspec 2026.9.0            0.22  psutil 7.2.2               0.16  multiprocess 0.70.19       0.14
  packaging 26.4             0.14  urllib3 2.8.0              0.14  anyio 4.16.0               0.13
  certifi 2026.10.19.post1   0.13  click 8.5.1                0.13  typer 0.29.2               0.12
  dill 0.4.1                 0.12  gguf 0.19.0                0.12
  httpx2 2.16.2              0.10  markdown-it-py 4.3.0       0.10  python-dateutil 4.0.0      0.09
  httpcore2 2.16.2           0.09  tqdm 4.70.1                0.08  requests 2.34.2            0.07
  idna 3.20                  0.07  stevedore 5.10.0           0.06  h11 0.16.0                 0.04
  pluggy 1.7.0               0.03  truststore 0.10.5          0.02  typing-inspection 0.4.5    0.01
  annotated-types 0.8.0      0.01  mdurl 0.1.2                0.01  shellingham 1.5.4          0.01
  annotated-doc 0.0.7        0.01

Total 165.4 MB (53 wheels), far over the 60 MB the issue asks for, and no choice of wheels
gets there: bitsandbytes (its CUDA kernels), transformers and numpy alone are 73.6 MB.
datasets, which lorapipe's data stage and TRL both need, brings pyarrow and pandas (67.4
MB); huggingface-hub brings hf-xet (4.3 MB, hub downloads only). scipy (35.4 MB) came with
datasketch, now the ``lorapipe[dedupe]`` extra (``data.near_dedupe`` only). A GPU image
that already has numpy, pyarrow and pandas needs about 81 MB more.
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
from typing import Any

import numpy as np

MAX_LENGTH, MICRO, ACCUM, LR = 2048, 2, 4, 2e-4
VALIDATION = 8  # lorapipe holds these out and scores them once, after the last step
LORA = dict(r=16, lora_alpha=32, lora_dropout=0.05, target_modules="all-linear",
            task_type="CAUSAL_LM")
LLAMA_3_1_8B = dict(hidden_size=4096, intermediate_size=14336, num_hidden_layers=32,
                    num_attention_heads=32, num_key_value_heads=8, vocab_size=128256)
SMOKE = dict(hidden_size=256, intermediate_size=896, num_hidden_layers=2,
             num_attention_heads=4, num_key_value_heads=2, vocab_size=2048)
ROPE = dict(rope_type="llama3", rope_theta=500000.0, factor=8.0, low_freq_factor=1.0,
            high_freq_factor=4.0, original_max_position_embeddings=8192)
CONTENDERS = ("lorapipe", "lorapipe+liger", "trl")
GIB = 1024**3


class ContenderFailed(Exception):
    """A contender's process failed; the message is the end of its log."""


def build(workdir: Path, smoke: bool, rows: int) -> dict[str, str]:
    """The model directory (random weights, seeded; tiny-llama's tokenizer) and the data;
    returns the device's name."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig

    from lorapipe.model.source import resolve_model_path

    tokenizer = AutoTokenizer.from_pretrained(resolve_model_path("tiny-llama"))
    config = LlamaConfig(**(SMOKE if smoke else LLAMA_3_1_8B), max_position_embeddings=131072,
                         rope_parameters=ROPE, tie_word_embeddings=False,
                         rms_norm_eps=1e-5, pad_token_id=tokenizer.pad_token_id,
                         bos_token_id=tokenizer.bos_token_id,
                         eos_token_id=tokenizer.eos_token_id)
    torch.manual_seed(0)
    # Initialised where it will run: 8B random weights take minutes on a CPU, seconds on a GPU.
    with torch.device("cuda" if torch.cuda.is_available() else "cpu"):
        model = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16)
    model.save_pretrained(workdir / "model")
    tokenizer.save_pretrained(workdir / "model")
    # One-token lower-case words of the vocabulary: plausible text whose length in tokens
    # is its length in words (plus the full stops).
    words = sorted(t[1:] for t in tokenizer.get_vocab() if t.startswith("Ġ")
                   and t[1:].isascii() and t[1:].isalpha() and t[1:].islower())
    write_data(workdir, words, rows)
    return {"device": torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"}


def write_data(workdir: Path, words: list[str], rows: int) -> None:
    """The same conversations as lorapipe's ``messages`` and TRL's prompt/completion."""
    rng = np.random.default_rng(0)

    def text(low: int, median: int, high: int) -> str:
        tokens = int(np.clip(rng.lognormal(np.log(median), 0.5), low, high))
        picked = rng.choice(words, size=tokens - tokens // 10)
        sentences = [" ".join(picked[i:i + 9]) for i in range(0, len(picked), 9)]
        return ". ".join(sentences) + "."

    with (workdir / "messages.jsonl").open("w") as ours, (workdir / "trl.jsonl").open("w") as trl:
        for _ in range(rows):
            user = {"role": "user", "content": text(20, 45, 120)}
            assistant = {"role": "assistant", "content": text(50, 130, 300)}
            ours.write(json.dumps({"messages": [user, assistant]}) + "\n")
            trl.write(json.dumps({"prompt": [user], "completion": [assistant]}) + "\n")


def lorapipe_config(workdir: Path, name: str, total_steps: int, cuda: bool) -> Path:
    """The run's YAML: lorapipe's defaults except what the comparison fixes."""
    import yaml

    train: dict[str, Any] = {
        "max_steps": total_steps, "micro_batch_size": MICRO,
        "gradient_accumulation_steps": ACCUM, "learning_rate": LR, "warmup_steps": 0,
        "optimizer": "paged_adamw_8bit" if cuda else "adamw", "gradient_checkpointing": True,
        "logging_steps": 1, "eval_steps": None, "save_steps": total_steps + 1,
    }
    if name == "lorapipe+liger":
        train["kernels"] = "liger"
    config = {
        "model": {"name_or_path": str(workdir / "model"), "quantizer": {"name": "nf4"}},
        "adapter": {"r": LORA["r"], "alpha": LORA["lora_alpha"], "dropout": LORA["lora_dropout"]},
        "data": {"loader": {"name": "jsonl", "path": str(workdir / "messages.jsonl")},
                 "max_length": MAX_LENGTH, "validation": {"count": VALIDATION}},
        "train": train,
        "output_dir": str(workdir / name),
    }
    path = workdir / f"{name}.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def run_lorapipe(workdir: Path, name: str, warmup: int, steps: int, cuda: bool,
                 env: dict[str, str]) -> dict[str, Any]:
    """``lorapipe prepare`` and ``lorapipe train`` on the run's config, timed from outside."""
    config = lorapipe_config(workdir, name, warmup + steps, cuda)
    run_dir, log = workdir / name, workdir / f"{name}.log"
    cli = [sys.executable, "-m", "lorapipe.cli"]
    with log.open("w") as out:
        if subprocess.run([*cli, "prepare", str(config)], stdout=out, stderr=subprocess.STDOUT,
                          env=env, check=False).returncode:
            raise ContenderFailed(tail(log))
        code = subprocess.run([*cli, "train", str(config)], stdout=out,
                              stderr=subprocess.STDOUT, env=env, check=False).returncode
    if code:
        raise ContenderFailed(tail(log))
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    steps_logged = {r["step"]: r for r in records if "tokens_per_s" in r}
    measured = [steps_logged[step] for step in range(warmup + 1, warmup + steps + 1)]
    seconds = sum(r["seconds"] for r in measured)
    tokens = sum(r["tokens_per_s"] * r["seconds"] for r in measured)
    snapshots = [r["memory"] if isinstance(r.get("memory"), dict) else r
                 for r in records if "memory" in r or r.get("event") == "memory"]
    model = json.loads((run_dir / "model_report.json").read_text())["model"]
    result = {"tokens_per_s": tokens / seconds, "measured_steps": steps, "seconds": seconds,
              "attention": model["attn_implementation"]}
    for ours, key in (("peak_allocated_bytes", "cuda_peak_allocated_bytes"),
                      ("peak_reserved_bytes", "cuda_peak_reserved_bytes"),
                      ("peak_rss_bytes", "peak_rss_bytes")):
        values = [s[key] for s in snapshots if key in s]
        if values:
            result[ours] = max(values)
    return result


def run_trl(workdir: Path, warmup: int, steps: int) -> dict[str, Any]:
    """SFTTrainer + PEFT on the same model, conversations and settings."""
    import torch
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import (
        AutoModelForCausalLM,
        AutoTokenizer,
        BitsAndBytesConfig,
        TrainerCallback,
    )
    from trl import SFTConfig, SFTTrainer

    cuda = torch.cuda.is_available()
    compute = torch.bfloat16 if cuda else torch.float32
    quantization = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4",
                                      bnb_4bit_use_double_quant=True,
                                      bnb_4bit_compute_dtype=compute)
    model = AutoModelForCausalLM.from_pretrained(
        workdir / "model", dtype=compute, attn_implementation="sdpa",
        quantization_config=quantization, device_map={"": 0 if cuda else "cpu"})
    marks: list[tuple[float, int]] = []

    class StepClock(TrainerCallback):
        def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            if cuda:
                torch.cuda.synchronize()
            marks.append((time.perf_counter(), state.num_input_tokens_seen))

    args = SFTConfig(
        output_dir=str(workdir / "trl"), per_device_train_batch_size=MICRO,
        gradient_accumulation_steps=ACCUM, max_steps=warmup + steps, learning_rate=LR,
        warmup_steps=0, lr_scheduler_type="cosine", max_length=MAX_LENGTH, bf16=cuda,
        use_cpu=not cuda, gradient_checkpointing=True,
        gradient_checkpointing_kwargs={"use_reentrant": False},
        optim="paged_adamw_8bit" if cuda else "adamw_torch", max_grad_norm=1.0,
        logging_steps=warmup + steps, save_strategy="no", report_to="none",
        include_num_input_tokens_seen="non_padding", seed=0, disable_tqdm=True,
    )
    lines = (workdir / "trl.jsonl").read_text().splitlines()
    trainer = SFTTrainer(model=model, args=args,
                         train_dataset=Dataset.from_list([json.loads(x) for x in lines]),
                         processing_class=AutoTokenizer.from_pretrained(workdir / "model"),
                         peft_config=LoraConfig(**LORA), callbacks=[StepClock()])
    trainer.train()
    (start, seen), (end, total) = marks[warmup - 1], marks[-1]
    result = {"tokens_per_s": (total - seen) / (end - start), "measured_steps": steps,
              "seconds": end - start, "attention": model.config._attn_implementation}
    result["peak_rss_bytes"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    if cuda:
        result.update(peak_allocated_bytes=torch.cuda.max_memory_allocated(),
                      peak_reserved_bytes=torch.cuda.max_memory_reserved())
    return result


def run_worker(workdir: Path, which: str, args: argparse.Namespace, env: dict[str, str],
               rows: int = 0) -> dict[str, Any]:
    """This script as ``--worker which`` in a fresh process; its RESULT line."""
    log = workdir / f"{which}.log"
    command = [sys.executable, __file__, "--worker", which, "--workdir", str(workdir),
               "--warmup-steps", str(args.warmup_steps), "--steps", str(args.steps),
               "--rows", str(rows), *(["--smoke"] if args.smoke else [])]
    with log.open("w") as out:
        code = subprocess.run(command, stdout=out, stderr=subprocess.STDOUT, env=env,
                              check=False).returncode
    found = [x for x in log.read_text().splitlines() if x.startswith("RESULT ")]
    if code or not found:
        raise ContenderFailed(tail(log))
    return json.loads(found[-1][len("RESULT "):])


def tail(log: Path, lines: int = 25) -> str:
    return "\n".join(log.read_text(errors="replace").splitlines()[-lines:])


def table(results: dict[str, dict[str, Any]], cuda: bool) -> str:
    """Tokens/s and peak memory per contender, with the ratios to TRL."""
    memory = "peak_allocated_bytes" if cuda else "peak_rss_bytes"
    trl = results.get("trl", {})

    def gib(r: dict[str, Any], key: str, width: int) -> str:
        return f"{r[key] / GIB:{width - 4}.1f} GiB" if key in r else f"{'-':>{width}s}"

    rows = [f"{'':15s} {'tokens/s':>9s} {'vs TRL':>7s} "
            f"{'peak alloc' if cuda else 'peak RSS':>10s} {'vs TRL':>7s} "
            f"{'peak reserved':>13s}  attention"]
    for name, r in results.items():
        if "tokens_per_s" not in r:
            rows.append(f"{name:15s} {r.get('skipped') or 'FAILED (log below)'}")
            continue
        ratios = [f"{r[key] / trl[key]:6.2f}x" if key in r and key in trl else f"{'-':>7s}"
                  for key in ("tokens_per_s", memory)]
        rows.append(f"{name:15s} {r['tokens_per_s']:9.0f} {ratios[0]} {gib(r, memory, 10)} "
                    f"{ratios[1]} {gib(r, 'peak_reserved_bytes', 13)}  {r['attention']}")
    for name, r in results.items():
        if "error" in r:
            rows.append(f"\n{name} failed:\n{r['error']}")
    return "\n".join(rows)


def positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError("at least 1")
    return value


def run_all(args: argparse.Namespace, cuda: bool) -> tuple[str, dict[str, dict[str, Any]]]:
    """Build once, then each contender in turn; the device's name and their results."""
    # Everything local: a hub lookup would hang or fail on a machine without a network.
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1",
           "TOKENIZERS_PARALLELISM": "false"}
    results: dict[str, dict[str, Any]] = {}
    with tempfile.TemporaryDirectory(prefix="gpu_qlora-") as tmp:
        workdir = Path(tmp)
        started = time.perf_counter()
        # Twice the conversations the steps take, so no contender starts a second epoch.
        rows = 2 * (args.warmup_steps + args.steps) * MICRO * ACCUM + VALIDATION
        try:
            device = run_worker(workdir, "build", args, env, rows=rows)["device"]
        except ContenderFailed as err:
            sys.exit(f"building the model and data failed:\n{err}")
        print(f"built the model and data in {time.perf_counter() - started:.0f}s", flush=True)
        for name in CONTENDERS:
            if name == "lorapipe+liger" and not cuda:
                results[name] = {"skipped": "skipped: Liger's kernels need CUDA"}
                continue
            started = time.perf_counter()
            try:
                results[name] = (run_worker(workdir, name, args, env) if name == "trl" else
                                 run_lorapipe(workdir, name, args.warmup_steps, args.steps,
                                              cuda, env))
            except ContenderFailed as err:
                results[name] = {"error": str(err)}
            print(f"{name}: {time.perf_counter() - started:.0f}s", flush=True)
    return device, results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--warmup-steps", type=positive,
                        help="optimizer steps not measured (default 3; 1 with --smoke)")
    parser.add_argument("--steps", type=positive,
                        help="optimizer steps measured (default 15; 2 with --smoke)")
    parser.add_argument("--json", type=Path, help="also write the results here")
    parser.add_argument("--smoke", action="store_true",
                        help="tiny model: checks the code paths, on the CPU if there is no GPU")
    parser.add_argument("--worker", choices=["build", "trl"], help=argparse.SUPPRESS)
    parser.add_argument("--workdir", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--rows", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker == "build":
        print("RESULT " + json.dumps(build(args.workdir, args.smoke, args.rows)))
        return
    if args.worker == "trl":
        print("RESULT " + json.dumps(run_trl(args.workdir, args.warmup_steps, args.steps)))
        return
    args.warmup_steps = args.warmup_steps or (1 if args.smoke else 3)
    args.steps = args.steps or (2 if args.smoke else 15)
    import torch  # asks the driver only: no CUDA context, no memory in this process

    cuda = torch.cuda.is_available()
    if not cuda and not args.smoke:
        sys.exit("no CUDA GPU here: the 8B bench needs one (--smoke checks the code paths)")
    device, results = run_all(args, cuda)
    if args.json:
        args.json.write_text(json.dumps({
            "device": device, "shape": SMOKE if args.smoke else LLAMA_3_1_8B,
            "warmup_steps": args.warmup_steps, "steps": args.steps, "micro_batch_size": MICRO,
            "gradient_accumulation_steps": ACCUM, "max_length": MAX_LENGTH,
            "results": results}, indent=2) + "\n")
    shape = "tiny (--smoke)" if args.smoke else "Llama-3.1-8B"
    print(f"\n{shape} QLoRA on {device}: {args.warmup_steps} warmup + {args.steps} measured "
          f"steps of {MICRO}×{ACCUM} conversations each\n{table(results, cuda)}")
    if any("error" in r for r in results.values()):
        sys.exit(1)


if __name__ == "__main__":
    main()
