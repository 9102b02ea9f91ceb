"""Vicuna v1.1 (FastChat): ``SYSTEM USER: ... ASSISTANT: reply</s>USER: ...``."""

from __future__ import annotations

from typing import Any

from lorapipe.plugin import Piece, PieceTemplate, alternating_turns

SYSTEM = (
    "A chat between a curious user and an artificial intelligence assistant. "
    "The assistant gives helpful, detailed, and polite answers to the user's questions."
)


class VicunaTemplate(PieceTemplate):
    """Vicuna v1.1: system, then USER: ... ASSISTANT: reply + EOS."""

    name = "vicuna"
    chat_template = (
        "{%- if messages and messages[0]['role'] == 'system' %}"
        "{%- set prefix = messages[0]['content'] + ' ' %}{%- set turns = messages[1:] %}"
        "{%- else %}{%- set prefix = \"" + SYSTEM + " \" %}{%- set turns = messages %}"
        "{%- endif %}{%- if bos_token %}{{- bos_token }}{%- endif %}"
        "{%- for m in turns %}{%- if m['role'] == 'user' %}"
        "{{- (prefix if loop.first else '') + 'USER: ' + m['content'] + ' ASSISTANT:' }}"
        "{%- else %}{{- ' ' + m['content'] + eos_token }}{%- endif %}{%- endfor %}"
    )

    def pieces(self, messages: list[dict[str, str]], tokenizer: Any, trained: set[int],
               generation_prompt: bool = False) -> list[Piece]:
        system, turns = alternating_turns(messages, "vicuna", generation_prompt)
        offset = len(messages) - len(turns)
        eos = self._token_id(tokenizer, tokenizer.eos_token, "EOS")
        out: list[Piece] = []
        if tokenizer.bos_token:
            out.append(([self._token_id(tokenizer, tokenizer.bos_token, "BOS")], False))
        prefix = f"{system if system is not None else SYSTEM} "
        for k, message in enumerate(turns):
            if message["role"] == "user":
                out.append((f"{prefix}USER: {message['content']} ASSISTANT:", False))
                prefix = ""
            else:
                # FastChat writes "ASSISTANT: reply"; the space belongs to the reply, so a
                # generation prompt ends at the colon and the model writes " reply".
                train = k + offset in trained
                out += [(f" {message['content']}", train), ([eos], train)]
        return out
