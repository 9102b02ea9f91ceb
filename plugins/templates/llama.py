"""Built-in named Llama chat templates (``llama3``, ``llama2``).

Both build the token sequence piece by piece — special-token ids placed directly, text
pieces tokenized on their own — so each message's token span is known by construction
and the mask needs no search. BOS comes from the tokenizer's ``bos_token`` and is written
once; text pieces are tokenized without special tokens, so it is never doubled.
"""

from __future__ import annotations

from typing import Any

from lorapipe import hookimpl
from lorapipe.components import ChatTemplate, EncodedConversation, UnrenderableConversation
from lorapipe.data.masking import assemble, trained_turns
from lorapipe.errors import UserError

# A piece is token ids or text still to be tokenized, and whether it is trained.
Piece = tuple[list[int] | str, bool]


class PieceTemplate(ChatTemplate):
    """A template defined by the pieces it emits; tokenizes the text pieces in one batch."""

    def pieces(self, messages: list[dict[str, str]], tokenizer: Any, trained: set[int],
               generation_prompt: bool = False) -> list[Piece]:
        raise NotImplementedError

    def _token_id(self, tokenizer: Any, token: str | None, what: str) -> int:
        token_id = tokenizer.convert_tokens_to_ids(token) if token else None
        if token_id is None or token_id == tokenizer.unk_token_id:
            raise UserError(
                f"data.template: template '{self.name}' needs the {what} token "
                f"{token or ''} but the model's tokenizer has none; use data.template: "
                "tokenizer (the model's own chat template) or a template made for this model"
            )
        return token_id

    def _tokenize_pieces(self, all_pieces: list[list[Piece]], tokenizer: Any,
                         train_on_inputs: bool) -> list[EncodedConversation]:
        texts = [p for pieces in all_pieces for p, _ in pieces if isinstance(p, str)]
        ids = iter(tokenizer(texts, add_special_tokens=False)["input_ids"] if texts else [])
        return [
            assemble([(next(ids) if isinstance(p, str) else p, t) for p, t in pieces],
                     train_on_inputs)
            for pieces in all_pieces
        ]

    def encode_batch(
        self,
        conversations: list[list[dict[str, str]]],
        tokenizer: Any,
        *,
        train_on: str = "all_assistant",
        train_on_inputs: bool = False,
    ) -> list[EncodedConversation]:
        all_pieces = [self.pieces(m, tokenizer, trained_turns(m, train_on)) for m in conversations]
        return self._tokenize_pieces(all_pieces, tokenizer, train_on_inputs)

    def encode(
        self,
        messages: list[dict[str, str]],
        tokenizer: Any,
        *,
        train_on: str = "all_assistant",
        train_on_inputs: bool = False,
    ) -> EncodedConversation:
        return self.encode_batch(
            [messages], tokenizer, train_on=train_on, train_on_inputs=train_on_inputs
        )[0]

    def generation_prompt(self, messages: list[dict[str, str]], tokenizer: Any) -> list[int]:
        pieces = self.pieces(messages, tokenizer, set(), generation_prompt=True)
        return self._tokenize_pieces([pieces], tokenizer, False)[0].input_ids


class Llama3Template(PieceTemplate):
    """Llama 3 headers: <|start_header_id|>role<|end_header_id|> ... <|eot_id|>."""

    name = "llama3"

    def pieces(self, messages: list[dict[str, str]], tokenizer: Any, trained: set[int],
               generation_prompt: bool = False) -> list[Piece]:
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

    def pieces(self, messages: list[dict[str, str]], tokenizer: Any, trained: set[int],
               generation_prompt: bool = False) -> list[Piece]:
        bos = self._token_id(tokenizer, tokenizer.bos_token, "BOS")
        eos = self._token_id(tokenizer, tokenizer.eos_token, "EOS")
        offset = 1 if messages and messages[0]["role"] == "system" else 0
        system = messages[0]["content"].strip() if offset else None
        turns = messages[offset:]
        for k, message in enumerate(turns):
            expected = "user" if k % 2 == 0 else "assistant"
            if message["role"] != expected:
                raise UnrenderableConversation(
                    f"llama2 needs an optional first system message, then user and "
                    f"assistant turns alternating; message {k + offset + 1} is "
                    f"'{message['role']}' where '{expected}' belongs"
                )
        if generation_prompt and turns and turns[-1]["role"] != "user":
            raise UnrenderableConversation("a generation prompt needs a final user turn")
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
