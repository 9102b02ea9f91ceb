"""An Ollama ``Modelfile`` beside each exported GGUF: ``ollama create NAME -f FILE``.

Ollama renders prompts with Go templates, not Jinja. It reads the GGUF's Jinja chat
template only when it recognises it as one of the templates it ships; any other (every
named lorapipe template's Jinja equivalent, for one) would silently serve the model raw
prompts. So when the trained template is *framed* — each message is a fixed prefix, its
content and a fixed suffix, as in Llama 3 and ChatML — the Go template is derived from
it here and written as ``TEMPLATE``, after checking that the frames reproduce the Jinja
template's rendering of several conversations exactly. Templates that fold the system
prompt into a turn or add text of their own (Llama 2, Mistral, Gemma, Qwen's default
system prompt) are left to Ollama's recognition, and the file says so.

Tools are left to Ollama, and the file says that too. How a template writes tool
definitions, calls and results (its own JSON layout, XML tags, special tokens) is not a
frame around a message's content, and Ollama writes ``.Tools``/``.ToolCalls`` with its own
JSON encoding (fixed key order), so a derived TEMPLATE could not be checked to render
them exactly. It renders none, and Ollama then turns down requests that carry tools (it
offers tools only to a template that uses ``.Tools``).

``stop`` is what the template writes after a reply (its end-of-turn marker);
``num_ctx`` is the context the model was trained on (``data.max_length``), not the
model's maximum, whose KV cache Ollama would reserve in full.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

_MARK = "\x00{}\x00"  # placeholders no real template writes
# What the file says of tools, with the TEMPLATE lorapipe derives and without one.
TOOLS_NOTE = ("# Tools: lorapipe leaves them to Ollama. This TEMPLATE renders no tool "
              "definitions or calls (.Tools, .ToolCalls), so Ollama turns down requests with "
              "tools; to serve tool calls, write a TEMPLATE that renders them in the format "
              "the model was trained on")
TOOLS_LEFT = ("# Tools: lorapipe leaves them to Ollama, which offers them only where the "
              "template it recognises renders them (.Tools) and parses the model's calls "
              "itself")


@dataclass(frozen=True)
class Frames:
    """The text a template writes around each message's content, per role, and the
    prompt that starts a reply."""

    system: tuple[str, str]
    user: tuple[str, str]
    assistant: tuple[str, str]
    generation: str


def render(tokenizer: Any, messages: list[dict[str, str]], generation: bool) -> str:
    """The chat template's text without a leading BOS, which llama.cpp adds itself."""
    text = tokenizer.apply_chat_template(messages, tokenize=False,
                                         add_generation_prompt=generation)
    bos = tokenizer.bos_token
    return text.removeprefix(bos) if bos else text


def _msg(role: str, name: str) -> dict[str, str]:
    return {"role": role, "content": _MARK.format(name)}


def _around(text: str, name: str) -> tuple[str, str] | None:
    parts = text.split(_MARK.format(name))
    return (parts[0], parts[1]) if len(parts) == 2 else None


def frames(tokenizer: Any) -> Frames | None:
    """The template's frames, or ``None`` when it is not framed (checked, not assumed)."""
    try:
        user = _around(render(tokenizer, [_msg("user", "u")], False), "u")
        answered = render(tokenizer, [_msg("user", "u"), _msg("assistant", "a")], False)
        prompted = render(tokenizer, [_msg("user", "u")], True)
        with_system = render(tokenizer, [_msg("system", "s"), _msg("user", "u")], False)
    except Exception:  # noqa: BLE001 - a template may raise anything (e.g. no system role)
        return None
    if user is None:
        return None
    user_text = user[0] + _MARK.format("u") + user[1]
    if not (answered.startswith(user_text) and prompted.startswith(user_text)
            and with_system.endswith(user_text)):
        return None
    assistant = _around(answered[len(user_text):], "a")
    system = _around(with_system[: -len(user_text)], "s")
    if assistant is None or system is None:
        return None
    found = Frames(system, user, assistant, prompted[len(user_text):])
    return found if _reproduces(tokenizer, found) else None


def _framed(found: Frames, messages: list[dict[str, str]], generation: bool) -> str:
    roles = {"system": found.system, "user": found.user, "assistant": found.assistant}
    text = "".join(roles[m["role"]][0] + m["content"] + roles[m["role"]][1] for m in messages)
    return text + (found.generation if generation else "")


def _reproduces(tokenizer: Any, found: Frames) -> bool:
    """Whether the frames render what the template renders, on conversations with and
    without a system prompt, several turns, and a reply to continue."""
    s, u, a = ({"role": r, "content": t} for r, t in
               (("system", "Be brief."), ("user", "Hi there"), ("assistant", "Hello!")))
    u2 = {"role": "user", "content": "Two\nlines"}
    cases = [[u], [s, u], [u, a, u2], [s, u, a, u2], [u, a]]
    try:
        return all(render(tokenizer, c, g) == _framed(found, c, g)
                   for c in cases for g in (False, True) if not (g and c[-1] is a))
    except Exception:  # noqa: BLE001
        return False


def go_template(found: Frames) -> str:
    """Ollama's Go template for ``found``: the system prompt, then each message; a reply
    is prompted after the last user message, and the last reply is left open (Ollama
    continues it) — as Ollama's own templates do."""
    return (
        "{{- if .System }}" + found.system[0] + "{{ .System }}" + found.system[1] + "{{ end }}"
        "{{- range $i, $_ := .Messages }}"
        "{{- $last := eq (len (slice $.Messages $i)) 1 }}"
        '{{- if eq .Role "user" }}' + found.user[0] + "{{ .Content }}" + found.user[1]
        + "{{ if $last }}" + found.generation + "{{ end }}"
        '{{- else if eq .Role "assistant" }}' + found.assistant[0] + "{{ .Content }}"
        + "{{ if not $last }}" + found.assistant[1] + "{{ end }}"
        "{{- end }}{{- end }}"
    )


def stops(tokenizer: Any) -> list[str]:
    """What the template writes after a reply, whitespace aside (e.g. ``<|eot_id|>``)."""
    try:
        text = render(tokenizer, [_msg("user", "u"), _msg("assistant", "a")], False)
    except Exception:  # noqa: BLE001
        return []
    after = text.split(_MARK.format("a"))[-1].strip()
    return [after] if after else []


def modelfile(gguf_name: str, tokenizer: Any, num_ctx: int | None) -> str:
    """The Modelfile text for ``gguf_name`` (a file in the same directory)."""
    lines = [f"# Ollama: ollama create NAME -f {gguf_name.removesuffix('.gguf')}.Modelfile",
             f"FROM ./{gguf_name}"]
    if num_ctx is not None:
        lines.append(f"PARAMETER num_ctx {num_ctx}")
    lines += [f"PARAMETER stop {_quoted(stop)}" for stop in stops(tokenizer)]
    found = frames(tokenizer) if tokenizer.chat_template else None
    template = go_template(found) if found is not None else None
    if template is not None and '"""' not in template:
        lines += [f'TEMPLATE """{template}"""', TOOLS_NOTE]
    else:
        lines.append("# No TEMPLATE: this chat template is not a fixed frame per message, so "
                     "Ollama must recognise the GGUF's own (check with `ollama show "
                     "--template NAME`)")
        lines.append(TOOLS_LEFT)
    return "\n".join(lines) + "\n"


def _quoted(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'
