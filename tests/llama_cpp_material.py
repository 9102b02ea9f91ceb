"""Real material no one here wrote, from llama.cpp's source tree: tokenizers and its
converter; and llama.cpp itself (llama-cpp-python) as the judge of a GGUF's logits.

llama-cpp-python's source distribution (the version the tests run against) carries
llama.cpp's tree: vocab-only GGUFs of real tokenizers (``models/ggml-vocab-*.gguf``) and
the reference converter (``convert_hf_to_gguf.py`` with ``conversion/`` and ``gguf-py/``).
It is downloaded once with pip (PyPI only) and the needed members are cached in
``$LORAPIPE_TEST_CACHE`` (default ``~/.cache/lorapipe-tests``), as are the Hugging Face
tokenizer directories built from the vocab files (transformers reads a vocab GGUF with
``gguf_file=``; building a 128k-token BPE that way takes ~25 s).

SentencePiece vocabularies also get the ``tokenizer.model`` real repositories ship: a
sentencepiece model rebuilt piece for piece (text, score, type) from the GGUF, which was
itself converted from that file.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
import struct
import subprocess
import sys
import tarfile
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from importlib.metadata import version
from pathlib import Path
from typing import Any

import numpy as np

TEMPLATES = Path(__file__).resolve().parent / "fixtures" / "chat_templates"
LLAMA_CPP_VERSION = version("llama-cpp-python")
_MEMBERS = ("convert_hf_to_gguf.py", "conversion/", "gguf-py/", "models/ggml-vocab-")

# name → (vocab file, chat template to set or None to keep the file's own)
TOKENIZERS = {
    "llama3": ("llama-bpe", "meta-llama-Llama-3.1-8B-Instruct.jinja"),
    "llama2-spm": ("llama-spm", "mistralai-Mistral-Nemo-Instruct-2407.jinja"),
    "phi3": ("phi-3", None),
    "qwen2": ("qwen2", "Qwen-Qwen2.5-7B-Instruct.jinja"),
    "qwen3": ("qwen2", "Qwen-Qwen3-0.6B.jinja"),
    "gemma": ("llama-spm", "google-gemma-2-2b-it.jinja"),
    # the 2026 families; the file's own template is a Gemma 4 one, Command R's its default
    "qwen35": ("qwen35", "Qwen3.5-4B.jinja"),
    "gemma4": ("gemma-4", None),
    "command-r": ("command-r", None),
    "deepseek": ("deepseek-llm", "deepseek-ai-DeepSeek-V3.1.jinja"),
}

# The class to build with where the one transformers picks from the file's architecture is
# wrong or missing. Only the class reads the tokenizer.* fields (``gguf_file=`` on a class
# goes straight to transformers' builder, keyed on ``tokenizer.ggml.model``); AutoTokenizer
# first turns the architecture's metadata into a model config, which fails for gemma4 (a
# per-layer ``head_count_kv`` list) and command-r (no config mapping), and takes the
# qwen35 file (architecture qwen2) for Qwen2, whose class splits without Qwen 3.5's marks.
# Gemma 4's ``gemma4`` model is a SentencePiece-style BPE with its merges in the file,
# which transformers' builder already turns into GemmaTokenizer: no rewriting needed.
_CLASSES = {"qwen35": "Qwen3_5Tokenizer", "gemma4": "GemmaTokenizer",
            "command-r": "CohereTokenizer"}

# DeepSeek LLM's pre-tokenizer (its tokenizer.json, as llama.cpp's deepseek-llm copies it;
# characters that Unicode normalization would change are escaped, so no tool rewrites them)
_DEEPSEEK_LLM_SPLITS = (
    "[\r\n]",
    ("\\s?[A-Za-zµÀ-ÖØ-öø-ƺƼ-ƿǄ-ʓʕ-ʯͰ-ͳͶͷͻ-ͽͿΆΈ-ΊΌΎ-ΡΣ-ϵϷ-ҁҊ-ԯԱ-ՖႠ-ჅᎠ-Ᏽᏸ-ᏽᲐ-ᲺᲽ-Ჿᴀ-ᴫᵫ-ᵷ"
     "ᵹ-ᶚḀ-ἕἘ-Ἕἠ-ὅὈ-Ὅὐ-ὗὙὛὝὟ-\u1f7dᾀ-ᾴᾶ-ᾼ\u1fbeῂ-ῄῆ-ῌῐ-\u1fd3ῖ-\u1fdbῠ-Ῥῲ-ῴῶ-ῼℂℇℊ-ℓℕℙ-"
     "ℝℤ\u2126ℨ\u212a-ℭℯ-ℴℹℼ-ℿⅅ-ⅉⅎↃↄⰀ-ⱻⱾ-ⳤⳫ-ⳮⳲⳳꙀ-ꙭꚀ-ꚛꜢ-ꝯꝱ-ꞇꞋ-ꞎꭰ-ꮿﬀ-ﬆﬓ-ﬗＡ-Ｚａ-ｚ𐐀-𐑏𐒰-𐓓𐓘-𐓻"
     "𐲀-𐲲𐳀-𐳲𑢠-𑣟𞤀-𞥃]+"),
    "\\s?[!-/:-~！-／：-～‘-‟\u3000-。]+",
    "\\s+$",
    "[一-龥ࠀ-一가-\ud7ff]+",
    "\\p{N}+",
)


GEMMA_TURNS = ("<start_of_turn>", "<end_of_turn>")


def cache_root() -> Path:
    root = os.environ.get("LORAPIPE_TEST_CACHE") or Path.home() / ".cache" / "lorapipe-tests"
    path = Path(root) / f"llama-cpp-python-{LLAMA_CPP_VERSION}"
    path.mkdir(parents=True, exist_ok=True)
    return path


@contextlib.contextmanager
def _locked(root: Path) -> Iterator[None]:
    with open(root / ".lock", "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        yield


def llama_cpp_tree() -> Path:
    """The cached members of llama.cpp's tree (downloaded from PyPI on first use)."""
    root = cache_root()
    tree = root / "llama.cpp"
    with _locked(root):
        if (tree / "convert_hf_to_gguf.py").is_file():
            return tree
        with tempfile.TemporaryDirectory(dir=root) as tmp:
            subprocess.run(
                [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps",
                 "--no-binary", ":all:", f"llama-cpp-python=={LLAMA_CPP_VERSION}", "-d", tmp],
                check=True,
            )
            (sdist,) = Path(tmp).glob("*.tar.gz")
            staging = Path(tmp) / "llama.cpp"
            with tarfile.open(sdist) as archive:
                for member in archive.getmembers():
                    _, _, inner = member.name.partition("/vendor/llama.cpp/")
                    if member.isfile() and inner.startswith(_MEMBERS):
                        member.name = inner
                        archive.extract(member, staging, filter="data")
            staging.rename(tree)
    return tree


def _sentencepiece_model(vocab: Path, out: Path, dummy_prefix: bool,
                         extra_control: tuple[str, ...] = ()) -> None:
    """Write ``tokenizer.model`` from a SentencePiece vocab GGUF.

    Only the pieces SentencePiece itself owns are written (unknown, BOS, EOS, the 256
    byte pieces, then up to the first piece that is not a plain one): added tokens live
    in tokenizer.json, as in the real repositories. ``extra_control`` appends control
    pieces (Gemma keeps its turn markers inside tokenizer.model).
    """
    import gguf
    from sentencepiece import sentencepiece_model_pb2 as spm

    reader = gguf.GGUFReader(vocab)
    tokens = reader.fields["tokenizer.ggml.tokens"].contents()
    scores = reader.fields["tokenizer.ggml.scores"].contents()
    types = reader.fields["tokenizer.ggml.token_type"].contents()
    count = next((i for i in range(259, len(tokens)) if types[i] != gguf.TokenType.NORMAL),
                 len(tokens))
    # a converter may have retyped the first three from added tokens; SentencePiece's own
    # are fixed: unknown, then BOS and EOS as control pieces
    fixed = [gguf.TokenType.UNKNOWN, gguf.TokenType.CONTROL, gguf.TokenType.CONTROL]
    model = spm.ModelProto()
    model.trainer_spec.model_type = spm.TrainerSpec.BPE
    model.trainer_spec.vocab_size = count + len(extra_control)
    model.trainer_spec.byte_fallback = True
    model.trainer_spec.unk_id, model.trainer_spec.bos_id = 0, 1
    model.trainer_spec.eos_id, model.trainer_spec.pad_id = 2, -1
    model.normalizer_spec.name = "identity"
    model.normalizer_spec.add_dummy_prefix = dummy_prefix
    model.normalizer_spec.remove_extra_whitespaces = False
    model.normalizer_spec.escape_whitespaces = True
    pieces = [(tokens[i], scores[i], fixed[i] if i < 3 else types[i]) for i in range(count)]
    pieces += [(text, 0.0, gguf.TokenType.CONTROL) for text in extra_control]
    for text, score, kind in pieces:
        piece = model.pieces.add()
        piece.piece, piece.score, piece.type = text, score, int(kind)
    out.write_bytes(model.SerializeToString())


def _gemma_style(directory: Path) -> None:
    """Gemma's SentencePiece conventions on a Llama-2 vocabulary (no Gemma 2/3 vocab file
    is in llama.cpp's tree): Gemma's turn markers as special tokens, and no dummy
    leading space (the tokenizer.json patched last: transformers re-adds one on save)."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(directory)
    tokenizer.add_special_tokens({"additional_special_tokens": list(GEMMA_TURNS)})
    tokenizer.save_pretrained(directory)
    path = directory / "tokenizer.json"
    data = json.loads(path.read_text(encoding="utf-8"))
    data["normalizer"] = {"type": "Replace", "pattern": {"String": " "}, "content": "\u2581"}
    data["pre_tokenizer"] = None
    data["decoder"]["decoders"] = [d for d in data["decoder"]["decoders"]
                                   if d["type"] != "Strip"]
    path.write_text(json.dumps(data, ensure_ascii=False), encoding="utf-8")


def _llama2_style(directory: Path) -> None:
    """The tokenizer.json Llama 2 and Mistral repositories ship (transformers' GGUF reader
    writes a Metaspace pre-tokenizer instead, which adds no '▁' after a special token):
    a dummy '▁' prepended to every piece of text, spaces as '▁'."""
    path = directory / "tokenizer.json"
    data = json.loads(path.read_text(encoding="utf-8"))
    data["normalizer"] = {"type": "Sequence", "normalizers": [
        {"type": "Prepend", "prepend": "\u2581"},
        {"type": "Replace", "pattern": {"String": " "}, "content": "\u2581"}]}
    data["pre_tokenizer"] = None
    data["decoder"] = {"type": "Sequence", "decoders": [
        {"type": "Replace", "pattern": {"String": "\u2581"}, "content": " "},
        {"type": "ByteFallback"}, {"type": "Fuse"},
        {"type": "Strip", "content": " ", "start": 1, "stop": 0}]}
    path.write_text(json.dumps(data, ensure_ascii=False), encoding="utf-8")


def _llama3_style(directory: Path) -> None:
    """What Meta's tokenizer.json has and the vocab file does not say: BOS added by the
    post-processor, and whole words looked up before merging (``ignore_merges``)."""
    path = directory / "tokenizer.json"
    data = json.loads(path.read_text(encoding="utf-8"))
    bos = "<|begin_of_text|>"
    bos_id = data["model"]["vocab"].get(bos) or next(
        t["id"] for t in data["added_tokens"] if t["content"] == bos)
    data["model"]["ignore_merges"] = True
    data["post_processor"] = {
        "type": "TemplateProcessing",
        "single": [{"SpecialToken": {"id": bos, "type_id": 0}},
                   {"Sequence": {"id": "A", "type_id": 0}}],
        "pair": [{"SpecialToken": {"id": bos, "type_id": 0}},
                 {"Sequence": {"id": "A", "type_id": 0}},
                 {"SpecialToken": {"id": bos, "type_id": 1}},
                 {"Sequence": {"id": "B", "type_id": 1}}],
        "special_tokens": {bos: {"id": bos, "ids": [bos_id], "tokens": [bos]}},
    }
    path.write_text(json.dumps(data, ensure_ascii=False), encoding="utf-8")


def _verbatim_vocab(directory: Path, meta: dict[str, Any]) -> None:
    """Every token of a byte-level vocab file under its own id, spelled as the file spells it.

    transformers' GGUF reader respells a token outside the byte-level alphabet: DeepSeek's
    control tokens (``<｜begin▁of▁sentence｜>``) then match no text, the BOS and EOS set
    from them are added again past the vocabulary (and BOS gets the new id); Command R's
    raw characters (``™``, U+200D) collide with real tokens and 43 ids vanish. The file
    spells each token as its tokenizer.json did, so it is used as is; control tokens are
    special added tokens and user-defined ones plain added tokens, both matched whole as
    llama.cpp matches them.
    """
    path = directory / "tokenizer.json"
    data = json.loads(path.read_text(encoding="utf-8"))
    tokens, types = meta["tokenizer.ggml.tokens"], meta["tokenizer.ggml.token_type"]
    vocab = {token: i for i, token in enumerate(tokens)}
    assert len(vocab) == len(tokens), "a token spelled twice"
    data["model"]["vocab"] = vocab
    added = {t["id"]: t for t in data["added_tokens"] if t["id"] < len(tokens)}
    for i, kind in enumerate(types):
        if kind in (3, 4):  # gguf.TokenType.CONTROL, USER_DEFINED
            added[i] = {"id": i, "content": tokens[i], "single_word": False, "lstrip": False,
                        "rstrip": False, "normalized": False, "special": kind == 3}
    data["added_tokens"] = [added[i] for i in sorted(added)]
    processor = data.get("post_processor") or {}
    for special in processor.get("special_tokens", {}).values():
        special["ids"] = [vocab[token] for token in special["tokens"]]
    path.write_text(json.dumps(data, ensure_ascii=False), encoding="utf-8")


def _deepseek_style(directory: Path) -> None:
    """DeepSeek LLM's pre-tokenizer (transformers' reader knows no ``deepseek-llm`` and
    leaves GPT-2's byte-level regex, which keeps a space in front of a number)."""
    path = directory / "tokenizer.json"
    data = json.loads(path.read_text(encoding="utf-8"))
    data["pre_tokenizer"] = {"type": "Sequence", "pretokenizers": [
        *({"type": "Split", "pattern": {"Regex": regex}, "behavior": "Isolated",
           "invert": False} for regex in _DEEPSEEK_LLM_SPLITS),
        {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True,
         "use_regex": False}]}
    path.write_text(json.dumps(data, ensure_ascii=False), encoding="utf-8")


def real_tokenizer(name: str) -> Path:
    """A Hugging Face tokenizer directory of the real tokenizer ``name`` (cached)."""
    import transformers
    from transformers import AutoTokenizer

    vocab_name, template = TOKENIZERS[name]
    vocab = llama_cpp_tree() / "models" / f"ggml-vocab-{vocab_name}.gguf"
    root = cache_root()
    target = root / "tokenizers" / name
    with _locked(root):
        if (target / "tokenizer.json").is_file():
            return target
        staging = Path(tempfile.mkdtemp(dir=root))
        meta, _ = read_gguf(vocab)
        builder = getattr(transformers, _CLASSES[name]) if name in _CLASSES else AutoTokenizer
        tokenizer = builder.from_pretrained(vocab.parent, gguf_file=vocab.name)
        if template is not None:
            tokenizer.chat_template = (TEMPLATES / template).read_text(encoding="utf-8")
        tokenizer.save_pretrained(staging)
        if name in ("command-r", "deepseek"):
            _verbatim_vocab(staging, meta)
        if name == "deepseek":
            _deepseek_style(staging)
        if name in _CLASSES:
            # a class of its own rebuilds its normalizer and pre-tokenizer when it loads
            # (Cohere's NFC and digit split, Qwen 3.5's NFC): saved once more as loaded,
            # tokenizer.json says what transformers does with it
            AutoTokenizer.from_pretrained(staging).save_pretrained(staging)
        if meta["tokenizer.ggml.model"] == "llama" and "tokenizer.ggml.scores" in meta:
            gemma = name == "gemma"
            _sentencepiece_model(vocab, staging / "tokenizer.model", dummy_prefix=not gemma,
                                 extra_control=GEMMA_TURNS if gemma else ())
        if name == "gemma":
            _gemma_style(staging)
        if name == "llama3":
            _llama3_style(staging)
        if name == "llama2-spm":
            _llama2_style(staging)
        target.parent.mkdir(exist_ok=True)
        shutil.rmtree(target, ignore_errors=True)
        staging.rename(target)
    return target


def cpp_logits(path: Path, ids: list[int], n_ctx: int = 512,
               lora: Path | None = None) -> np.ndarray:
    """llama.cpp's logits for ``ids`` at every position of the GGUF at ``path`` (with the
    adapter GGUF ``lora`` applied, as ``llama-cli --lora`` does)."""
    import llama_cpp

    # f32 KV cache so only the exported weights differ from transformers
    llm = llama_cpp.Llama(str(path), n_ctx=n_ctx, logits_all=True, verbose=False, n_threads=2,
                          type_k=0, type_v=0, lora_path=str(lora) if lora else None)
    try:
        llm.eval(ids)
        return np.array(llm.scores[: len(ids)])
    finally:
        llm.close()


def gguf_fields(path: Path) -> list[str]:
    import gguf

    return list(gguf.GGUFReader(path).fields)


def llama_quantize(f16: Path, out: Path, ftype: int) -> Path:
    """``f16`` quantized by llama.cpp itself, as ``llama-quantize`` does (``ftype``: a
    ``llama_cpp.LLAMA_FTYPE_*``)."""
    import ctypes

    import llama_cpp

    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = ftype
    params.nthread = 2
    assert llama_cpp.llama_model_quantize(str(f16).encode(), str(out).encode(),
                                          ctypes.byref(params)) == 0
    return out


@dataclass(frozen=True)
class GgufTensor:
    name: str
    type: Any  # gguf.GGMLQuantizationType
    shape: tuple[int, ...]  # GGUF order: the row length first
    data: np.ndarray  # the stored bytes


# GGUF value types (gguf.GGUFValueType) of fixed size → struct format
_SCALARS = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?",
            10: "<Q", 11: "<q", 12: "<d"}
_STRING, _ARRAY = 8, 9


def read_gguf(path: Path) -> tuple[dict[str, Any], dict[str, GgufTensor]]:
    """The metadata and tensors of a GGUF file, read fast.

    gguf-py's ``GGUFReader`` builds a numpy view per array element: 19 s for the ~530,000
    vocabulary strings and merges of a Llama 3 file, against well under a second here
    (strings decoded, numeric arrays as lists, tensors as byte views of the file).
    """
    import gguf

    raw = np.memmap(path, mode="r")
    view = memoryview(raw)
    pos = 0

    def take(fmt: str) -> Any:
        nonlocal pos
        (value,) = struct.unpack_from(fmt, view, pos)
        pos += struct.calcsize(fmt)
        return value

    def string() -> str:
        nonlocal pos
        length = take("<Q")
        pos += length
        return bytes(view[pos - length:pos]).decode("utf-8")

    def value(kind: int) -> Any:
        nonlocal pos
        if kind == _STRING:
            return string()
        if kind != _ARRAY:
            return take(_SCALARS[kind])
        item, count = take("<I"), take("<Q")
        if item == _STRING:
            return [string() for _ in range(count)]
        if item == _ARRAY:
            return [value(_ARRAY) for _ in range(count)]
        dtype = np.dtype(_SCALARS[item])
        items = np.frombuffer(view, dtype, count, pos)
        pos += items.nbytes
        return items.tolist()

    assert bytes(view[:4]) == b"GGUF", path
    pos = 4
    take("<I")  # version
    n_tensors, n_fields = take("<Q"), take("<Q")
    meta = {}
    for _ in range(n_fields):
        key = string()
        meta[key] = value(take("<I"))
    infos = []
    for _ in range(n_tensors):
        name = string()
        shape = tuple(take("<Q") for _ in range(take("<I")))
        infos.append((name, gguf.GGMLQuantizationType(take("<I")), shape, take("<Q")))
    alignment = meta.get("general.alignment", 32)
    start = -(-pos // alignment) * alignment
    tensors = {}
    for name, qtype, shape, offset in infos:
        block, size = gguf.GGML_QUANT_SIZES[qtype]
        nbytes = int(np.prod(shape)) // block * size
        tensors[name] = GgufTensor(name, qtype, shape,
                                   np.asarray(raw[start + offset:start + offset + nbytes]))
    return meta, tensors


def compare_tensors(ours: Path, theirs: Path) -> tuple[dict[str, tuple[str, str]], int, int]:
    """Tensors whose types differ (name → (ours, theirs)), and how many blocks of the
    quantized tensors are byte-identical out of how many (float tensors are copies)."""
    import gguf

    float_types = (gguf.GGMLQuantizationType.F32, gguf.GGMLQuantizationType.F16,
                   gguf.GGMLQuantizationType.BF16)
    _, got = read_gguf(ours)
    _, want = read_gguf(theirs)
    assert set(got) == set(want), set(got) ^ set(want)
    differ = {name: (t.type.name, want[name].type.name)
              for name, t in got.items() if t.type != want[name].type}
    same = total = 0
    for name, tensor in got.items():
        if name in differ or tensor.type in float_types:
            continue
        size = gguf.GGML_QUANT_SIZES[tensor.type][1]
        mine, reference = tensor.data.reshape(-1, size), want[name].data.reshape(-1, size)
        same += int((mine == reference).all(axis=1).sum())
        total += len(mine)
    return differ, same, total


def f16_valued_copy(model_dir: Path, out: Path) -> Path:
    """``model_dir`` (one safetensors file) with every weight rounded to f16, as an f16
    GGUF holds it: a file quantized from the copy starts from the values llama-quantize
    reads from that GGUF."""
    from safetensors.torch import load_file, save_file

    shutil.copytree(model_dir, out)
    weights = out / "model.safetensors"
    save_file({k: v.half().float() for k, v in load_file(weights).items()}, weights)
    return out


def f16_valued_logits(model_dir: Path, ids: list[int]) -> np.ndarray:
    """transformers' logits with the weights an f16 GGUF holds (each rounded to f16): what
    remains between them and llama.cpp's is how each computes, not the file's rounding."""
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.copy_(parameter.half().float())
        return model(torch.tensor([ids])).logits[0].numpy()


def quantized_as_llama_does(f16_valued: Path, f16: Path, type_name: str, ftype: int,
                            out_dir: Path) -> Path:
    """Our ``type_name`` GGUF of ``f16_valued`` (``f16_valued_copy``), checked to hold the
    tensor types and bytes llama-quantize writes from ``f16`` (``ftype``); returns ours."""
    from lorapipe.plugins.exporters.gguf.writer import write_gguf

    ours = write_gguf(f16_valued, out_dir / f"{type_name}.gguf", type_name,
                      progress=False).path
    theirs = llama_quantize(f16, out_dir / f"{type_name}-cpp.gguf", ftype)
    differ, same, total = compare_tensors(ours, theirs)
    assert not differ, (type_name, differ)
    assert same == total, f"{type_name}: {same}/{total} blocks identical"
    return ours
