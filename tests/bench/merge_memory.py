"""Peak memory of merging an adapter into a model: lorapipe's shard-by-shard merge vs
peft's ``merge_and_unload``, against the model's size.

Run:  python tests/bench/merge_memory.py [--layers 12] [--hidden 1024]

Builds a Llama-shaped model with random weights (shape, not values, sets the cost),
saved in 200 MB shards, and a random rank-16 adapter on every linear layer. Each merge
runs in a child process; lorapipe's under a data-size limit (``ulimit -d``, set with
setrlimit) of 60% of the model's size above what the interpreter already uses, so it
could not hold the model even once; then, under the same limit, the merge stage's streamed
logit check (base + adapter against the merged model, 4 samples of 64 tokens, one module's
weights at a time); peft's without a limit, and once more under the same limit to show it
cannot merge there. Prints wall time and peak RSS for each. Everything is
written to a temporary directory that is deleted afterwards.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

CHILD = r"""
import json, resource, sys, threading, time
from pathlib import Path
import psutil, torch
kind, base, adapter, out, limit = sys.argv[1:6]
from lorapipe.merge.streaming import Architecture, merge_checkpoint
from lorapipe.model.loading import weightless_model
from lorapipe.config import ModelConfig
architecture = Architecture.of(weightless_model(ModelConfig(name_or_path=base)))
if int(limit):
    status = Path("/proc/self/status").read_text().splitlines()
    used = next(int(line.split()[1]) * 1024 for line in status if line.startswith("VmData:"))
    resource.setrlimit(resource.RLIMIT_DATA, (used + int(limit), resource.RLIM_INFINITY))
process = psutil.Process()
baseline = peak = process.memory_info().rss
running = True
def sample():
    global peak
    while running:
        peak = max(peak, process.memory_info().rss)
        time.sleep(0.005)
sampler = threading.Thread(target=sample, daemon=True)
sampler.start()
started = time.perf_counter()
try:
    result = "ok"
    if kind == "lorapipe":
        Path(out).mkdir()
        merge_checkpoint(Path(base), Path(adapter), Path(out), dtype=torch.float32,
                         shard_bytes=int(limit) // 8 if int(limit) else 1 << 30,  # as the stage
                         architecture=architecture)
    elif kind == "check":  # the stage's streamed logit check of base+adapter vs out
        from peft import PeftConfig, get_peft_model
        from safetensors.torch import load_file
        from transformers import AutoConfig, AutoModelForCausalLM
        from lorapipe.merge.streamed_logits import (Checkpoint, adapter_source,
            materialize_buffers, model_source, streamed_logits)
        samples = torch.randint(10, 30000, (4, 64), generator=torch.Generator().manual_seed(0))
        def skeleton(path):
            with torch.device("meta"):
                model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(path))
            materialize_buffers(model)
            return model.eval()
        peft_model = get_peft_model(skeleton(base), PeftConfig.from_pretrained(adapter)).eval()
        weights = load_file(str(Path(adapter) / "adapter_model.safetensors"))
        reference = streamed_logits(peft_model, adapter_source(peft_model, Checkpoint(Path(base)),
                                    weights), samples.tolist(), torch.float32)
        merged = skeleton(out)
        got = streamed_logits(merged, model_source(merged, Checkpoint(Path(out))),
                              samples.tolist(), torch.float32)
        diff = max(float((a - b).abs().max()) for a, b in zip(reference, got))
        result = "ok" if diff < 1e-3 else f"differs {diff:.3g}"
    else:
        from peft import PeftModel
        from transformers import AutoModelForCausalLM
        model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
        PeftModel.from_pretrained(model, adapter).merge_and_unload().save_pretrained(out)
except MemoryError:
    result = "MemoryError"
except (RuntimeError, OSError) as err:
    result = "failed: " + str(err).splitlines()[0][:200]
running = False
sampler.join()
print(json.dumps({"result": result, "seconds": time.perf_counter() - started,
                  "peak_rss": peak, "baseline_rss": baseline}))
"""


def _build(root: Path, layers: int, hidden: int) -> int:
    from peft import LoraConfig, get_peft_model
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(vocab_size=32000, hidden_size=hidden, intermediate_size=hidden * 11 // 4,
                         num_hidden_layers=layers, num_attention_heads=hidden // 64,
                         num_key_value_heads=hidden // 256)
    torch.manual_seed(0)
    model = LlamaForCausalLM(config)
    model.save_pretrained(root / "base", max_shard_size="200MB")
    size = sum(p.numel() * p.element_size() for p in model.parameters())
    lora = LoraConfig(r=16, lora_alpha=32, init_lora_weights=False,
                      target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj",
                                      "up_proj", "down_proj"])
    get_peft_model(model, lora).save_pretrained(root / "adapter")
    return size


def _run(kind: str, root: Path, limit: int, tag: str) -> dict:
    out = root / ("out-lorapipe-ulimit" if kind == "check" else f"out-{kind}-{tag}")
    # glibc's default raises its mmap threshold as large blocks are freed, after which
    # freed tensors stay in the heap and count against the limit though nothing uses them;
    # a fixed threshold returns each large block to the system when it is freed.
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": str(1 << 20)}
    done = subprocess.run([sys.executable, "-c", CHILD, kind, str(root / "base"),
                           str(root / "adapter"), str(out), str(limit)],
                          capture_output=True, text=True, env=env)
    lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
    if not lines:
        return {"result": f"exit {done.returncode}: {done.stderr.strip().splitlines()[-1:]}",
                "seconds": float("nan"), "peak_rss": 0, "baseline_rss": 0}
    return json.loads(lines[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layers", type=int, default=12)
    parser.add_argument("--hidden", type=int, default=1024)
    args = parser.parse_args()
    mib = 1 << 20
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        started = time.perf_counter()
        size = _build(root, args.layers, args.hidden)
        print(f"model: {size / mib:,.0f} MiB of float32 weights in "
              f"{len(list((root / 'base').glob('*.safetensors')))} shards "
              f"(built in {time.perf_counter() - started:.0f} s)")
        limit = size * 6 // 10
        runs = [("lorapipe", limit, f"ulimit -d +{limit / mib:,.0f} MiB"),
                ("check", limit, f"ulimit -d +{limit / mib:,.0f} MiB"),
                ("peft", 0, "no limit"), ("peft", limit, f"ulimit -d +{limit / mib:,.0f} MiB")]
        print(f"{'merge':<10}{'limit':<24}{'result':<14}{'wall s':>8}{'peak RSS MiB':>14}"
              f"{'peak - start MiB':>18}{'/ model':>9}")
        for kind, cap, label in runs:
            row = _run(kind, root, cap, label.split()[0])
            grown = row["peak_rss"] - row["baseline_rss"]
            if row["result"] != "ok":
                print(f"  ({kind}: {row['result']})")
            print(f"{kind:<10}{label:<24}{row['result'][:13]:<14}{row['seconds']:>8.1f}"
                  f"{row['peak_rss'] / mib:>14,.0f}{grown / mib:>18,.0f}{grown / size:>9.2f}")


if __name__ == "__main__":
    main()
