"""Chat templates written as the pieces they emit: a base for named templates.

A subclass returns, for a conversation, the pieces of its rendering in order — token ids
or text still to be tokenized, each with whether it is trained — so the mask comes from
the template's own structure. The built-in ``llama3``/``llama2`` and contrib's
``chatml``, ``alpaca``, ``vicuna`` and ``mistral`` are written this way.
"""

from __future__ import annotations

from abc import abstractmethod
from typing import Any, ClassVar

from lorapipe.authoring.masking import assemble, trained_turns
from lorapipe.components import (
    ChatTemplate,
    Conversation,
    EncodedConversation,
    UnrenderableConversation,
)

# A piece is token ids or text still to be tokenized, and whether it is trained.
Piece = tuple[list[int] | str, bool]


class PieceTemplate(ChatTemplate):
    """A template defined by the pieces it emits; tokenizes the text pieces in one batch.

    ``chat_template`` is the same format in Jinja, for serving: rendered by
    ``apply_chat_template`` it gives the text of the pieces (tests check it).
    """

    chat_template: ClassVar[str]

    def serving_template(self, tokenizer: Any) -> str:
        return self.chat_template

    def served_text(self, messages: Conversation, tokenizer: Any,
                    generation_prompt: bool = False) -> str:
        """The conversation as ``chat_template`` renders it (what serving will show the
        model); a template is right when this equals :meth:`text`."""
        return tokenizer.apply_chat_template(messages, chat_template=self.chat_template,
                                             tokenize=False,
                                             add_generation_prompt=generation_prompt)

    def text(self, messages: Conversation, tokenizer: Any, generation_prompt: bool = False
             ) -> str:
        """The conversation as text: the pieces joined, token ids written as their tokens
        (what ``chat_template`` must render, and what a reader checks a format by)."""
        pieces = self.pieces(messages, tokenizer, set(), generation_prompt)
        return "".join(p if isinstance(p, str) else "".join(tokenizer.convert_ids_to_tokens(p))
                       for p, _ in pieces)

    @abstractmethod
    def pieces(
        self,
        messages: list[dict[str, str]],
        tokenizer: Any,
        trained: set[int],
        generation_prompt: bool = False,
    ) -> list[Piece]:
        """The conversation as ``(text or token ids, trained)`` pieces in order; the
        messages whose indices are in ``trained`` are marked trained."""

    def _token_id(self, tokenizer: Any, token: str | None, what: str) -> int:
        token_id = tokenizer.convert_tokens_to_ids(token) if token else None
        if token_id is None or token_id == tokenizer.unk_token_id:
            raise self.config_error(
                f"template '{self.name}' needs the {what} token {token or ''} but the "
                "model's tokenizer has none"
            )
        return token_id

    def _tokenize_pieces(
        self, all_pieces: list[list[Piece]], tokenizer: Any, train_on_inputs: bool
    ) -> list[EncodedConversation]:
        texts = [p for pieces in all_pieces for p, _ in pieces if isinstance(p, str)]
        ids = iter(tokenizer(texts, add_special_tokens=False)["input_ids"] if texts else [])
        return [
            assemble(
                [(next(ids) if isinstance(p, str) else p, t) for p, t in pieces], train_on_inputs
            )
            for pieces in all_pieces
        ]

    def encode_batch(
        self,
        conversations: list[list[dict[str, str]]],
        tokenizer: Any,
        *,
        train_on: str = "all_assistant",
        train_on_inputs: bool = False,
        **features: Any,  # none: ``renders`` is empty, so the engine passes none
    ) -> list[EncodedConversation]:
        all_pieces = [self.pieces(m, tokenizer, trained_turns(m, train_on)) for m in conversations]
        return self._tokenize_pieces(all_pieces, tokenizer, train_on_inputs)

    def generation_prompt(self, messages: list[dict[str, str]], tokenizer: Any,
                          **features: Any) -> list[int]:
        pieces = self.pieces(messages, tokenizer, set(), generation_prompt=True)
        return self._tokenize_pieces([pieces], tokenizer, False)[0].input_ids


def alternating_turns(messages: Conversation, template: str, generation_prompt: bool = False
                      ) -> tuple[str | None, Conversation]:
    """The optional leading system prompt and the user/assistant turns after it.

    Templates with one slot per user and per assistant turn (Llama 2, Alpaca, Vicuna,
    Mistral) need a conversation that alternates starting with the user; a generation
    prompt needs the user to have the last word. Raises ``UnrenderableConversation``
    (named after ``template``) otherwise.
    """
    system = messages[0]["content"] if messages and messages[0]["role"] == "system" else None
    turns = messages[1:] if system is not None else messages
    for k, message in enumerate(turns):
        expected = "user" if k % 2 == 0 else "assistant"
        if message["role"] != expected:
            offset = 1 if system is not None else 0
            raise UnrenderableConversation(
                f"{template} needs an optional first system message, then user and "
                f"assistant turns alternating; message {k + offset + 1} is "
                f"'{message['role']}' where '{expected}' belongs"
            )
    if generation_prompt and (not turns or turns[-1]["role"] != "user"):
        raise UnrenderableConversation("a generation prompt needs a final user turn")
    return system, turns
