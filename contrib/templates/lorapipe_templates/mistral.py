"""Mistral instruct: ``<s>[INST] user [/INST] reply</s>[INST] ...`` (v0.1/v0.2 form).

Mistral has no system role; a system message goes before the first user message,
separated by a blank line, as Mistral's own later templates do. BOS is written once.
On tokenizers where ``[INST]``/``[/INST]`` are special tokens (v0.3) the text pieces
still become those tokens, because added tokens are matched in text.
"""

from __future__ import annotations

from typing import Any

from lorapipe.plugin import Piece, PieceTemplate, alternating_turns


class MistralTemplate(PieceTemplate):
    """Mistral instruct: BOS, [INST] user [/INST] reply + EOS, repeated."""

    name = "mistral"
    chat_template = (
        "{%- if messages and messages[0]['role'] == 'system' %}"
        "{%- set system = messages[0]['content'] %}{%- set turns = messages[1:] %}"
        "{%- else %}{%- set system = '' %}{%- set turns = messages %}{%- endif %}"
        "{{- bos_token }}{%- for m in turns %}{%- if m['role'] == 'user' %}"
        "{%- set content = m['content'] %}"
        "{%- if loop.first and system %}{%- set content = system + '\\n\\n' + content %}"
        "{%- endif %}{{- '[INST] ' + content + ' [/INST]' }}"
        "{%- else %}{{- ' ' + m['content'] + eos_token }}{%- endif %}{%- endfor %}"
    )

    def pieces(self, messages: list[dict[str, str]], tokenizer: Any, trained: set[int],
               generation_prompt: bool = False) -> list[Piece]:
        system, turns = alternating_turns(messages, "mistral", generation_prompt)
        offset = len(messages) - len(turns)
        bos = self._token_id(tokenizer, tokenizer.bos_token, "BOS")
        eos = self._token_id(tokenizer, tokenizer.eos_token, "EOS")
        out: list[Piece] = [([bos], False)]
        for k, message in enumerate(turns):
            if message["role"] == "user":
                content = message["content"]
                if k == 0 and system:
                    content = f"{system}\n\n{content}"
                out.append((f"[INST] {content} [/INST]", False))
            else:
                train = k + offset in trained
                out += [(f" {message['content']}", train), ([eos], train)]
        return out
