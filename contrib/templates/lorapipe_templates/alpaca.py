"""Alpaca: ``### Instruction:`` / ``### Response:`` sections after a preamble.

Multi-turn conversations repeat the two sections (as Axolotl and FastChat do); a system
message replaces the default preamble. The reply is closed with the tokenizer's EOS so
the model learns to stop.
"""

from __future__ import annotations

from typing import Any

from lorapipe.plugin import Piece, PieceTemplate, alternating_turns

PREAMBLE = (
    "Below is an instruction that describes a task. "
    "Write a response that appropriately completes the request."
)


class AlpacaTemplate(PieceTemplate):
    """Alpaca: preamble, ### Instruction:, ### Response:, reply + EOS."""

    name = "alpaca"
    chat_template = (
        "{%- if messages and messages[0]['role'] == 'system' %}"
        "{%- set prefix = messages[0]['content'] + '\\n\\n' %}{%- set turns = messages[1:] %}"
        "{%- else %}{%- set prefix = \"" + PREAMBLE + "\\n\\n\" %}{%- set turns = messages %}"
        "{%- endif %}{%- if bos_token %}{{- bos_token }}{%- endif %}"
        "{%- for m in turns %}{%- if m['role'] == 'user' %}"
        "{{- (prefix if loop.first else '\\n\\n') + '### Instruction:\\n' + m['content']"
        " + '\\n\\n### Response:\\n' }}"
        "{%- else %}{{- m['content'] + eos_token }}{%- endif %}{%- endfor %}"
    )

    def pieces(self, messages: list[dict[str, str]], tokenizer: Any, trained: set[int],
               generation_prompt: bool = False) -> list[Piece]:
        system, turns = alternating_turns(messages, "alpaca", generation_prompt)
        offset = len(messages) - len(turns)
        eos = self._token_id(tokenizer, tokenizer.eos_token, "EOS")
        out: list[Piece] = []
        if tokenizer.bos_token:
            out.append(([self._token_id(tokenizer, tokenizer.bos_token, "BOS")], False))
        prefix = f"{system if system is not None else PREAMBLE}\n\n"
        for k, message in enumerate(turns):
            if message["role"] == "user":
                out.append((f"{prefix}### Instruction:\n{message['content']}\n\n"
                            "### Response:\n", False))
                prefix = "\n\n"
            else:
                train = k + offset in trained
                out += [(message["content"], train), ([eos], train)]
        return out
