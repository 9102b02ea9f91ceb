"""Built-in named Llama chat templates (``llama3``, ``llama2``).

Both build the token sequence piece by piece — special-token ids placed directly, text
pieces tokenized on their own — so each message's token span is known by construction
and the mask needs no search. BOS comes from the tokenizer's ``bos_token`` and is written
once; text pieces are tokenized without special tokens, so it is never doubled.
"""

from __future__ import annotations

from typing import Any

from lorapipe.plugin import Piece, PieceTemplate, alternating_turns, hookimpl


class Llama3Template(PieceTemplate):
    """Llama 3 headers: <|start_header_id|>role<|end_header_id|> ... <|eot_id|>."""

    name = "llama3"
    chat_template = (
        "{{- bos_token }}{%- for m in messages %}"
        "{{- '<|start_header_id|>' + m['role'] + '<|end_header_id|>\\n\\n' + m['content'] | trim"
        " + '<|eot_id|>' }}{%- endfor %}"
        "{%- if add_generation_prompt %}"
        "{{- '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}{%- endif %}"
    )

    def pieces(
        self,
        messages: list[dict[str, str]],
        tokenizer: Any,
        trained: set[int],
        generation_prompt: bool = False,
    ) -> list[Piece]:
        start = self._token_id(tokenizer, "<|start_header_id|>", "header start")
        end = self._token_id(tokenizer, "<|end_header_id|>", "header end")
        eot = self._token_id(tokenizer, "<|eot_id|>", "end-of-turn")
        bos = self._token_id(tokenizer, tokenizer.bos_token, "BOS")

        def header(role: str) -> list[Piece]:
            return [([start], False), (role, False), ([end], False), ("\n\n", False)]

        out: list[Piece] = [([bos], False)]
        for i, message in enumerate(messages):
            out += header(message["role"])
            out += [(message["content"].strip(), i in trained), ([eot], i in trained)]
        if generation_prompt:
            out += header("assistant")
        return [p for p in out if p[0] != ""]


class Llama2Template(PieceTemplate):
    """Llama 2 chat: <s>[INST] <<SYS>> ... <</SYS>> user [/INST] assistant </s>."""

    name = "llama2"
    chat_template = (
        "{%- if messages and messages[0]['role'] == 'system' %}"
        "{%- set system = messages[0]['content'] | trim %}{%- set turns = messages[1:] %}"
        "{%- else %}{%- set system = '' %}{%- set turns = messages %}{%- endif %}"
        "{%- for m in turns %}{%- if loop.index0 % 2 == 0 %}"
        "{%- set content = m['content'] | trim %}"
        "{%- if loop.first and system %}"
        "{%- set content = '<<SYS>>\\n' + system + '\\n<</SYS>>\\n\\n' + content %}{%- endif %}"
        "{{- bos_token + '[INST] ' + content + ' [/INST]' }}"
        "{%- else %}{{- m['content'] | trim + eos_token }}{%- endif %}{%- endfor %}"
    )

    def pieces(
        self,
        messages: list[dict[str, str]],
        tokenizer: Any,
        trained: set[int],
        generation_prompt: bool = False,
    ) -> list[Piece]:
        bos = self._token_id(tokenizer, tokenizer.bos_token, "BOS")
        eos = self._token_id(tokenizer, tokenizer.eos_token, "EOS")
        system, turns = alternating_turns(messages, self.name, generation_prompt)
        system = system.strip() if system is not None else None
        offset = 1 if messages and messages[0]["role"] == "system" else 0
        out: list[Piece] = []
        for k, message in enumerate(turns):
            content = message["content"].strip()
            if k % 2 == 0:
                if k == 0 and system:
                    content = f"<<SYS>>\n{system}\n<</SYS>>\n\n{content}"
                out += [([bos], False), (f"[INST] {content} [/INST]", False)]
            else:
                train = k + offset in trained
                out += [(content, train), ([eos], train)]
        return out


@hookimpl
def lorapipe_register_chat_templates(register):  # noqa: ANN001, ANN201 - pluggy hook
    register(Llama3Template)
    register(Llama2Template)
