"""Dense families llama.cpp's converter writes with the common metadata (``TextModel``)
and the checkpoint's weights as they are: Qwen 2/3, OLMo 2, Seed-OSS, EXAONE 4, Cohere 2
(Command R7B) and GLM-4 (its ``gate_up_proj`` stays fused: llama.cpp splits it itself).
Where llama.cpp fixes a layer pattern the converter does not write (Cohere 2's sliding
layers, EXAONE 4's below 64 layers), a checkpoint with another pattern is refused:
llama.cpp would run a different model.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import gguf

from lorapipe.plugin import UserError

from .base import CONVERT, Family


class Qwen2(Family):
    model_types = ("qwen2",)
    arch = gguf.MODEL_ARCH.QWEN2


class Qwen3(Family):
    model_types = ("qwen3",)
    arch = gguf.MODEL_ARCH.QWEN3


class Olmo2(Family):
    model_types = ("olmo2",)
    arch = gguf.MODEL_ARCH.OLMO2

    def metadata(self, writer: gguf.GGUFWriter) -> None:
        super().metadata(writer)
        if "sliding_window" in self.hp:
            writer.add_sliding_window(int(self.hp["sliding_window"]))
            writer.add_sliding_window_pattern(self.sliding_pattern())


class SeedOss(Family):
    model_types = ("seed_oss",)
    arch = gguf.MODEL_ARCH.SEED_OSS


class Exaone4(Family):
    model_types = ("exaone4",)
    arch = gguf.MODEL_ARCH.EXAONE4

    def __init__(self, hp: dict[str, Any], where: Path) -> None:
        super().__init__(hp, where)
        # llama.cpp reads the sliding window of the 64-layer model only (the 32B); any
        # other size runs every layer as global attention with RoPE, while transformers
        # keeps the window and drops RoPE on the global layers.
        if hp.get("sliding_window") is not None and self.n_layers != 64 and any(
                self.sliding_pattern()):
            raise UserError(
                f"{where}: EXAONE 4 with a sliding window and {self.n_layers} layers; "
                "llama.cpp applies the window only to the 64-layer model and would compute a "
                f"different model. Convert with llama.cpp: {CONVERT}"
            )

    def metadata(self, writer: gguf.GGUFWriter) -> None:
        super().metadata(writer)
        writer.add_vocab_size(self.vocab_size)
        if self.hp.get("sliding_window") is not None:
            writer.add_sliding_window(int(self.hp["sliding_window"]))
            writer.add_sliding_window_pattern(self.sliding_pattern())


class Cohere2(Family):
    model_types = ("cohere2",)
    arch = gguf.MODEL_ARCH.COHERE2
    rope_types = ("default",)
    skipped = ("lm_head.weight",)  # tied: llama.cpp reuses token_embd

    def __init__(self, hp: dict[str, Any], where: Path) -> None:
        super().__init__(hp, where)
        # llama.cpp's graph slides three layers in four (the converter writes no pattern)
        # and rotates every head dimension
        expected = [i % 4 < 3 for i in range(self.n_layers)]
        if self.sliding_pattern() != expected:
            raise UserError(
                f"{where}: Cohere 2 layer_types {self.hp['layer_types']} differ from the "
                "pattern llama.cpp fixes for this architecture (three sliding layers, then "
                f"one global); llama.cpp would compute a different model. Convert with "
                f"llama.cpp: {CONVERT}"
            )

    def metadata(self, writer: gguf.GGUFWriter) -> None:
        super().metadata(writer)
        hp = self.hp
        writer.add_logit_scale(float(hp["logit_scale"]))
        writer.add_sliding_window(int(hp["sliding_window"]))
        writer.add_vocab_size(self.vocab_size)
        writer.add_rope_dimension_count(self.head_dim)
        writer.add_rope_scaling_type(gguf.RopeScalingType.NONE)

    def skip(self, key: str) -> bool:
        # llama.cpp's Cohere 2 graph has no biases; the converter drops them (all zero)
        return super().skip(key) or key.endswith(".bias")


class Glm4(Family):
    model_types = ("glm4",)
    arch = gguf.MODEL_ARCH.GLM4
    rope_types = ("default",)
    # the converter takes GLM-4's end-of-text and turn markers from these added tokens
    _TOKENS = {"eos": "<|endoftext|>", "eot": "<|user|>", "unk": "<|endoftext|>",
               "bos": "<|endoftext|>"}

    def metadata(self, writer: gguf.GGUFWriter) -> None:
        super().metadata(writer)
        fraction = float(self.rope.get("partial_rotary_factor", 0.5))
        writer.add_rope_dimension_count(int(self.head_dim * fraction))

    def special_tokens(self, added: dict[str, int]) -> dict[str, int]:
        missing = sorted({text for text in self._TOKENS.values() if text not in added})
        if missing:
            raise UserError(
                f"{self.where.parent / 'tokenizer.json'}: GLM-4's tokenizer has no "
                f"{', '.join(missing)}; llama.cpp's converter reads GLM-4's end-of-text and "
                "turn tokens from them (and fails without). Merge with the GLM-4 tokenizer"
            )
        return {kind: added[text] for kind, text in self._TOKENS.items()}
