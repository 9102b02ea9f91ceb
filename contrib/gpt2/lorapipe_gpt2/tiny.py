"""A tiny GPT-2, built locally and deterministically, for tests and demos without a hub.

Like lorapipe's ``tiny-llama``: random weights from a seed (same seed → byte-identical
files), a byte-level BPE trained on a fixed corpus with GPT-2's own pre-tokenizer and
``<|endoftext|>`` as BOS/EOS, and as pad token too (the real GPT-2 has none; fine-tuning
recipes set ``pad_token = eos_token``, and so does this one). GPT-2 has no chat
template, so the tokenizer gets the ChatML one with ``<|im_start|>``/``<|im_end|>`` as
special tokens (both ``data.template: tokenizer`` and ``chatml`` then work). The
architecture is the real ``GPT2LMHeadModel`` — ``Conv1D`` layers, tied embeddings — so
the code paths are those of any GPT-2 checkpoint.

lorapipe resolves only ``tiny-llama`` by name; build this one into a directory and
point ``model.name_or_path`` at it: ``lorapipe-tiny-gpt2 models/tiny-gpt2``.
"""

from __future__ import annotations

import argparse
from pathlib import Path

VOCAB_SIZE = 1024
EOT = "<|endoftext|>"
IM_START = "<|im_start|>"
IM_END = "<|im_end|>"
SPECIAL_TOKENS = [EOT, IM_START, IM_END]

CHAT_TEMPLATE = (
    "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n' + "
    "message['content'] + '<|im_end|>' + '\n'}}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


def _train_tokenizer():
    from tokenizers import pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    from lorapipe.plugin import train_byte_level_bpe

    # GPT-2's pre-tokenizer: its regex split plus the byte-to-unicode mapping.
    tokenizer = train_byte_level_bpe(
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True),
        VOCAB_SIZE - len(SPECIAL_TOKENS),
    )
    tokenizer.add_special_tokens(SPECIAL_TOKENS)
    wrapped = PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        bos_token=EOT,
        eos_token=EOT,
        unk_token=EOT,
        pad_token=EOT,
        model_max_length=1024,
        clean_up_tokenization_spaces=False,
    )
    wrapped.chat_template = CHAT_TEMPLATE
    return wrapped


def build_tiny_gpt2(out_dir: Path, seed: int = 0) -> Path:
    """Write the tiny GPT-2 and its tokenizer to ``out_dir`` (a normal HF model dir)."""
    import torch
    from transformers import GenerationConfig, GPT2Config, GPT2LMHeadModel

    out_dir = Path(out_dir)
    tokenizer = _train_tokenizer()
    eot_id = tokenizer.convert_tokens_to_ids(EOT)
    im_end_id = tokenizer.convert_tokens_to_ids(IM_END)
    config = GPT2Config(
        vocab_size=len(tokenizer),
        n_positions=1024,
        n_embd=64,
        n_layer=2,
        n_head=4,
        bos_token_id=eot_id,
        eos_token_id=eot_id,
        pad_token_id=eot_id,
        dtype="float32",
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = GPT2LMHeadModel(config).to(torch.float32)
    model.generation_config = GenerationConfig(
        bos_token_id=eot_id, eos_token_id=[im_end_id, eot_id], pad_token_id=eot_id
    )
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir, save_jinja_files=False)
    return out_dir


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="lorapipe-tiny-gpt2", description="Build the tiny GPT-2 into a directory."
    )
    parser.add_argument("out_dir", type=Path)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    print(build_tiny_gpt2(args.out_dir, seed=args.seed))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
