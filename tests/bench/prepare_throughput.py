"""Records/s and peak memory of ``lorapipe prepare`` vs a straightforward per-record loop.

Run:  python tests/bench/prepare_throughput.py [--records 100000] [--lorapipe-only]

The baseline renders and tokenizes one record at a time in this process
(``apply_chat_template`` for the full text and for the prefixes the mask needs, one
tokenizer call with offsets per record). lorapipe runs as the user runs it, the
``lorapipe prepare`` command in a child process (records/s from the stage time it records
in run.json, which includes loading the tokenizer; the command's time is shown too),
while a sampler records the resident memory of that process and its workers.
Both paths must give identical ``input_ids`` and ``labels``; the script checks that.
``--lorapipe-only`` skips the baseline: the memory check on a big file (the generated
records average ~0.7 KiB, so ``--records 1450000`` writes about 1 GiB). Everything is
written to a temporary directory that is deleted afterwards.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import resource
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import psutil
import yaml
from datasets import load_from_disk
from transformers import AutoTokenizer

from lorapipe.model.source import resolve_model_path

WORDS = [
    "the", "quick", "brown", "fox", "jumps", "over", "a", "lazy", "dog", "while", "market",
    "bakers", "sell", "warm", "bread", "and", "apples", "near", "the", "fountain", "in", "the",
    "village", "square", "every", "sunny", "morning",
]


def generate(path: Path, n: int) -> None:
    rng = random.Random(0)
    with path.open("w") as handle:
        for i in range(n):
            messages = [{"role": "system", "content": "You are helpful."}] if i % 2 else []
            for _ in range(1 + i % 3):
                messages.append({"role": "user", "content": f"#{i} " + " ".join(
                    rng.choices(WORDS, k=rng.randint(5, 30)))})
                messages.append({"role": "assistant", "content": " ".join(
                    rng.choices(WORDS, k=rng.randint(5, 60)))})
            handle.write(json.dumps({"messages": messages}) + "\n")


def digest(input_ids: list[int], labels: list[int]) -> bytes:
    """A compact stand-in for a sample (100k samples as Python int lists would take GBs)."""
    return hashlib.blake2b(np.asarray(input_ids, dtype=np.int32).tobytes()
                           + np.asarray(labels, dtype=np.int32).tobytes()).digest()


def baseline(path: Path, tokenizer) -> dict[str, bytes]:  # noqa: ANN001
    out = {}
    with path.open() as handle:
        for number, line in enumerate(handle, start=1):
            messages = json.loads(line)["messages"]
            full = tokenizer.apply_chat_template(messages, tokenize=False)
            spans = []
            for i, message in enumerate(messages):
                if message["role"] == "assistant":
                    start = len(tokenizer.apply_chat_template(
                        messages[:i], tokenize=False, add_generation_prompt=True))
                    end = len(tokenizer.apply_chat_template(
                        messages[: i + 1], tokenize=False).rstrip())
                    spans.append((start, end))
            enc = tokenizer(full, add_special_tokens=False, return_offsets_mapping=True)
            labels = [t if any(s < e2 and e > s2 for s2, e2 in spans) else -100
                      for t, (s, e) in zip(enc["input_ids"], enc["offset_mapping"], strict=True)]
            out[f"{path}:{number}"] = digest(enc["input_ids"], labels)
    return out


def run_lorapipe(config: Path, run_json: Path) -> tuple[float, float, int, int]:
    """Seconds of the command, seconds of the stage (from run.json: without interpreter
    start-up and imports), peak RSS of the largest process (ru_maxrss, in bytes) and peak
    PSS summed over the process tree (forked workers share pages with their parent; PSS
    counts a shared page once in all, where summing RSS would count it per process)."""
    command = [str(Path(sys.executable).with_name("lorapipe")), "prepare", str(config)]
    start = time.perf_counter()
    child = psutil.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    tree_peak = 0
    done = threading.Event()

    def sample() -> None:
        nonlocal tree_peak
        while not done.is_set():
            try:
                procs = [child, *child.children(recursive=True)]
                tree_peak = max(tree_peak, sum(p.memory_full_info().pss for p in procs))
            except psutil.Error:
                pass
            time.sleep(1.0)  # reading PSS costs ~10 ms a process; don't slow the run

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    _, err = child.communicate()
    seconds = time.perf_counter() - start
    done.set()
    sampler.join()
    if child.returncode != 0:
        sys.exit(f"lorapipe prepare failed ({child.returncode}):\n{err.decode()[-3000:]}")
    largest = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024  # KiB on Linux
    stage = json.loads(run_json.read_text())["stages"]["prepare"]["seconds"]
    return seconds, stage, largest, tree_peak


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--records", type=int, default=100_000)
    parser.add_argument("--lorapipe-only", action="store_true",
                        help="skip the baseline and the comparison (memory check on big data)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        os.environ.setdefault("LORAPIPE_CACHE", str(root / "cache"))
        data = root / "bench.jsonl"
        generate(data, args.records)
        config_path = root / "bench.yaml"
        config_path.write_text(yaml.safe_dump({
            "model": {"name_or_path": "tiny-llama"},
            "data": {"loader": {"name": "jsonl", "path": str(data)}, "max_length": 2048},
            "output_dir": str(root / "run"),
        }))
        tokenizer = AutoTokenizer.from_pretrained(resolve_model_path("tiny-llama"))
        n = args.records
        mib = 1 << 20
        print(f"records: {n}  file: {data.stat().st_size / mib:,.0f} MiB  "
              f"cpus: {os.cpu_count()}  load average: {os.getloadavg()[0]:.1f}")

        if not args.lorapipe_only:
            start = time.perf_counter()
            expected = baseline(data, tokenizer)
            base_s = time.perf_counter() - start
            print(f"per-record loop: {n / base_s:,.0f} records/s ({base_s:.1f} s)")

        wall_s, ours_s, largest, tree = run_lorapipe(config_path, root / "run" / "run.json")
        print(f"lorapipe prepare: {n / ours_s:,.0f} records/s ({ours_s:.1f} s in the stage; "
              f"{wall_s:.1f} s for the whole command with start-up)")
        print(f"lorapipe peak memory: RSS {largest / mib:,.0f} MiB (largest process), "
              f"PSS {tree / mib:,.0f} MiB (whole process tree, sampled every 1 s)")
        if args.lorapipe_only:
            return

        checked = 0
        for split in ("train", "validation"):
            prepared = load_from_disk(str(root / "run" / "data" / split))
            for batch in prepared.select_columns(["input_ids", "labels", "source"]).iter(1000):
                for ids, labels, source in zip(batch["input_ids"], batch["labels"],
                                               batch["source"], strict=True):
                    assert digest(ids, labels) == expected[source], source
                    checked += 1
        assert checked == len(expected), (checked, len(expected))
        print(f"ratio: {base_s / ours_s:.2f}x (identical input_ids and labels for all "
              f"{checked} records)")


if __name__ == "__main__":
    main()
