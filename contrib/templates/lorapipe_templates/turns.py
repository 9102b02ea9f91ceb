"""The conversation shape the instruction-style templates can express."""

from __future__ import annotations

from lorapipe.components import UnrenderableConversation


def alternating(messages: list[dict[str, str]], template: str,
                generation_prompt: bool = False) -> tuple[str | None, list[dict[str, str]]]:
    """The optional leading system prompt and the user/assistant turns after it.

    Alpaca, Vicuna and Mistral have one slot per user and per assistant turn, so a
    conversation must alternate starting with the user; a generation prompt needs the
    user to have the last word.
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
