"""ChatML: ``<|im_start|>role\\ncontent<|im_end|>\\n`` per message (Qwen, OpenHermes, ...).

The two markers must be special tokens of the model's tokenizer. When they are missing
the template refuses instead of adding them: new embedding rows start random, a
LoRA adapter alone cannot train them, and the exported model would need the resized
vocabulary too — a silent quality trap. The user picks a template the model knows.
"""

from __future__ import annotations

from typing import Any

from lorapipe.plugin import Piece, PieceTemplate

IM_START = "<|im_start|>"
IM_END = "<|im_end|>"


class ChatMLTemplate(PieceTemplate):
    """ChatML: <|im_start|>role\\n ... <|im_end|>; needs both markers as special tokens."""

    name = "chatml"
    chat_template = (
        "{%- for m in messages %}"
        "{{- '<|im_start|>' + m['role'] + '\\n' + m['content'] + '<|im_end|>\\n' }}"
        "{%- endfor %}{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
    )

    def _marker(self, tokenizer: Any, token: str) -> int:
        token_id = tokenizer.convert_tokens_to_ids(token)
        if token_id is None or token_id == tokenizer.unk_token_id:
            raise self.config_error(
                f"template 'chatml' needs the special token {token}, which "
                "this model's tokenizer lacks. lorapipe does not add it: its embedding row "
                "would start random and a LoRA adapter cannot train it. Use a model "
                "trained with ChatML, or another template"
            )
        return token_id

    def pieces(self, messages: list[dict[str, str]], tokenizer: Any, trained: set[int],
               generation_prompt: bool = False) -> list[Piece]:
        start = self._marker(tokenizer, IM_START)
        end = self._marker(tokenizer, IM_END)
        out: list[Piece] = []
        for i, message in enumerate(messages):
            train = i in trained
            # The newline after <|im_end|> separates turns; it is not part of the reply.
            out += [([start], False), (f"{message['role']}\n", False),
                    (message["content"], train), ([end], train), ("\n", False)]
        if generation_prompt:
            out += [([start], False), ("assistant\n", False)]
        return [p for p in out if p[0] != ""]
