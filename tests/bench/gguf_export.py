"""Wall time and peak memory of GGUF export: lorapipe's writer vs llama.cpp's tools.

Run:  python tests/bench/gguf_export.py [--layers 28] [--hidden 1024] [--intermediate 3072]

Builds a model of Qwen3-0.6B's shapes in the Llama architecture, which both our writer
and llama.cpp's converter handle: 28 layers, hidden 1024, 16 query / 8 KV heads of 128,
MLP 3072, tied embeddings over Qwen's real 151k-token BPE tokenizer (from llama.cpp's vocab
files, as the family tests use; the converter refuses tiny-llama's tokenizer, whose
pre-tokenizer it does not know). Every row divides into 256-value blocks, so the K-quants
apply (Qwen2.5-0.5B's hidden 896 does not). Random weights, rounded to f16 values and
saved as float32 like a merged model: llama-quantize (which reads the f16 file) and our
writer then quantize the same numbers, and the q4_k_m files compare block by block.

Compares, each in a child process (wall time, peak RSS and its anonymous part):
  f16, q8_0   lorapipe's writer  vs  llama.cpp's convert_hf_to_gguf.py (with the gguf-py
              of the same tree), from llama-cpp-python's source distribution
  q4_k_m      lorapipe's writer  vs  convert_hf_to_gguf.py f16 + llama_model_quantize
              (the compiled quantizer, every core)
Everything is written to a temporary directory that is deleted afterwards.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

TESTS = Path(__file__).resolve().parents[1]

OURS = r"""
import sys
from pathlib import Path
from lorapipe.plugins.exporters.gguf.writer import write_gguf
write_gguf(Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3], progress=False)
"""

QUANTIZE = r"""
import ctypes, sys
import llama_cpp
params = llama_cpp.llama_model_quantize_default_params()
params.ftype = llama_cpp.LLAMA_FTYPE_MOSTLY_Q4_K_M
assert llama_cpp.llama_model_quantize(sys.argv[1].encode(), sys.argv[2].encode(),
                                      ctypes.byref(params)) == 0
"""


def _build(model_dir: Path, layers: int, hidden: int, intermediate: int) -> int:
    from llama_cpp_material import real_tokenizer
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    tokenizer = AutoTokenizer.from_pretrained(real_tokenizer("qwen3"))
    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=hidden, intermediate_size=intermediate,
        num_hidden_layers=layers, num_attention_heads=16, num_key_value_heads=8, head_dim=128,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        tie_word_embeddings=True,
    )
    torch.manual_seed(0)
    model = LlamaForCausalLM(config)
    with torch.no_grad():
        for param in model.parameters():
            param.copy_(param.half().float())
    model.save_pretrained(model_dir, max_shard_size="2GB")
    tokenizer.save_pretrained(model_dir)
    return sum(p.numel() for p in model.parameters())


def _run(args: list[str], log: Path, env: dict[str, str] | None = None
         ) -> tuple[float, int, int]:
    """Wall seconds, peak RSS and peak anonymous RSS (bytes, sampled every 10 ms) of one
    child process. RSS also counts the pages of memory-mapped safetensors files a reader
    has touched (clean page cache the kernel can drop); the anonymous part is what the
    process itself holds."""
    import psutil

    started = time.perf_counter()
    with open(log, "wb") as stderr:
        child = subprocess.Popen(args, env={**os.environ, **(env or {})},
                                 stdout=subprocess.DEVNULL, stderr=stderr)
        process, peak, peak_anon = psutil.Process(child.pid), 0, 0
        while child.poll() is None:
            with contextlib.suppress(psutil.NoSuchProcess):
                memory = process.memory_info()
                peak = max(peak, memory.rss)
                peak_anon = max(peak_anon, memory.rss - memory.shared)
            time.sleep(0.01)
    seconds = time.perf_counter() - started
    if child.returncode:
        raise SystemExit(f"{args[:3]} failed:\n{log.read_text()[-2000:]}")
    return seconds, peak, peak_anon


def _identical_blocks(ours: Path, theirs: Path) -> tuple[int, int, bool]:
    import gguf
    import numpy as np

    mine = {t.name: t for t in gguf.GGUFReader(ours).tensors}
    reference = {t.name: t for t in gguf.GGUFReader(theirs).tensors}
    same = total = 0
    for name, tensor in mine.items():
        block_bytes = gguf.GGML_QUANT_SIZES[tensor.tensor_type][1]
        a = np.asarray(tensor.data).view(np.uint8).reshape(-1, block_bytes)
        b = np.asarray(reference[name].data).view(np.uint8).reshape(-1, block_bytes)
        same += int((a == b).all(axis=1).sum()) if a.shape == b.shape else 0
        total += len(a)
    types_match = ({n: t.tensor_type for n, t in mine.items()}
                   == {n: t.tensor_type for n, t in reference.items()})
    return same, total, types_match


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layers", type=int, default=28)
    parser.add_argument("--hidden", type=int, default=1024)
    parser.add_argument("--intermediate", type=int, default=3072)
    args = parser.parse_args()
    sys.path.insert(0, str(TESTS))
    from llama_cpp_material import llama_cpp_tree

    tree = llama_cpp_tree()
    convert_env = {"PYTHONPATH": str(tree / "gguf-py")}
    mib = 1 << 20
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        model = root / "model"
        started = time.perf_counter()
        n_params = _build(model, args.layers, args.hidden, args.intermediate)
        print(f"model: {n_params / 1e6:,.0f}M parameters, float32 safetensors "
              f"(built in {time.perf_counter() - started:.0f} s); {os.cpu_count()} CPU cores")

        def ours(type_name: str) -> tuple[float, int, int]:
            return _run([sys.executable, "-c", OURS, str(model),
                         str(root / f"ours-{type_name}.gguf"), type_name], root / "log")

        def convert(type_name: str) -> tuple[float, int, int]:
            return _run([sys.executable, str(tree / "convert_hf_to_gguf.py"), str(model),
                         "--outtype", type_name, "--outfile", str(root / f"cpp-{type_name}.gguf")],
                        root / "log", convert_env)

        rows = []
        for type_name in ("f16", "q8_0"):
            rows.append((type_name, "lorapipe", *ours(type_name)))
            rows.append((type_name, "convert_hf_to_gguf.py", *convert(type_name)))
        rows.append(("q4_k_m", "lorapipe", *ours("q4_k_m")))
        converted = rows[1][2:]  # f16 by the converter
        quantized = _run([sys.executable, "-c", QUANTIZE, str(root / "cpp-f16.gguf"),
                          str(root / "cpp-q4_k_m.gguf")], root / "log")
        rows.append(("q4_k_m", "llama_model_quantize (from f16)", *quantized))
        rows.append(("q4_k_m", "convert f16 + quantize", converted[0] + quantized[0],
                     max(converted[1], quantized[1]), max(converted[2], quantized[2])))

        print(f"{'type':<8}{'tool':<34}{'wall s':>8}{'peak RSS MiB':>14}{'anon MiB':>10}"
              f"{'file MiB':>10}")
        for type_name, tool, seconds, rss, anon in rows:
            prefix = "ours" if tool == "lorapipe" else "cpp"
            size = (root / f"{prefix}-{type_name}.gguf").stat().st_size
            shown = "" if "+" in tool else f"{size / mib:,.0f}"
            print(f"{type_name:<8}{tool:<34}{seconds:>8.1f}{rss / mib:>14,.0f}{anon / mib:>10,.0f}"
                  f"{shown:>10}")
        same, total, types_match = _identical_blocks(root / "ours-q4_k_m.gguf",
                                                     root / "cpp-q4_k_m.gguf")
        print(f"q4_k_m vs llama-quantize: tensor types {'equal' if types_match else 'DIFFER'}, "
              f"{same}/{total} blocks identical ({100 * same / total:.3f}%)")


if __name__ == "__main__":
    main()
