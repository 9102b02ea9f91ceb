"""One conversation's messages, as files write them, mapped onto the canonical messages
templates render (``lorapipe.components.Conversation``).

The canonical shape is the one ``apply_chat_template`` and the Hugging Face / OpenAI chat
formats use: roles ``system``, ``user``, ``assistant`` and ``tool``; an assistant turn may
carry ``tool_calls`` (each ``{"id", "type": "function", "function": {"name",
"arguments"}}``, arguments as a dict, which every template renders with ``tojson``) and
``reasoning_content``; a tool turn carries the result as ``content`` plus
``tool_call_id`` and ``name``. Other spellings map onto it: Llama 3.1's ``ipython`` role,
the legacy OpenAI ``function`` role, ShareGPT's ``function_call`` and ``observation``
turns (LLaMA-Factory's format), gpt-oss's ``thinking``, and content given as a list of
``{"type": "text", "text"}`` parts.

Checks that need the whole conversation are made here too: a tool result with no call
before it, a result answering a call id the turn before did not make.
"""

from __future__ import annotations

import json
from typing import Any

from lorapipe.components import RecordError

Message = dict[str, Any]

ROLES = {"system": "system", "user": "user", "assistant": "assistant", "tool": "tool",
         "ipython": "tool", "function": "tool"}
SHAREGPT_ROLES = {"system": "system", "human": "user", "user": "user", "gpt": "assistant",
                  "assistant": "assistant", "chatgpt": "assistant", "observation": "tool",
                  "tool": "tool", "function_call": "assistant"}
_REASONING = ("reasoning_content", "thinking")


def _content(value: Any, where: str, role: str) -> str:
    """Message content as text: a string, text parts joined, ``""`` for a missing one of an
    assistant turn (its tool calls are its content), a tool result's JSON as text."""
    if isinstance(value, str):
        return value
    if value is None and role == "assistant":
        return ""
    if isinstance(value, list) and all(isinstance(p, dict) for p in value):
        if all(p.get("type") == "text" and isinstance(p.get("text"), str) for p in value):
            return "".join(p["text"] for p in value)
        kinds = sorted({str(p.get("type")) for p in value} - {"text"})
        raise RecordError("unsupported_content", f"{where} has {', '.join(kinds)} parts; "
                                                 "only text parts can be trained")
    if role == "tool" and isinstance(value, (dict, list, int, float, bool)):
        return json.dumps(value, ensure_ascii=False)
    raise RecordError("wrong_type", f"{where} must be a string, got {type(value).__name__}")


def _parsed(value: Any, reason: str, where: str) -> Any:
    """``value``, or the JSON a string of it holds (tools, calls and arguments are often
    stored as JSON text)."""
    if not isinstance(value, str):
        return value
    try:
        return json.loads(value)
    except json.JSONDecodeError as err:
        raise RecordError(reason, f"{where} is not JSON ({err.msg}, column {err.colno})"
                          ) from None


def _arguments(value: Any, where: str) -> dict[str, Any]:
    value = _parsed(value, "bad_tool_call", where)
    if not isinstance(value, dict):
        raise RecordError("bad_tool_call",
                          f"{where} must be a JSON object (or a string of one), "
                          f"got {type(value).__name__}")
    return value


def tool_call(value: Any, where: str, number: int) -> dict[str, Any]:
    """One call in the canonical shape. ``number`` (1-based, over the conversation) names
    a call without an id: ``call00001``, nine alphanumerics, as Mistral's templates need."""
    if not isinstance(value, dict):
        raise RecordError("bad_tool_call", f"{where} must be an object")
    kind = value.get("type", "function")
    function = value.get("function", value if "name" in value else None)
    if kind != "function" or not isinstance(function, dict):
        raise RecordError("bad_tool_call",
                          f"{where} is not a function call (expected {{type: function, "
                          f"function: {{name, arguments}}}})")
    name = function.get("name")
    if not isinstance(name, str) or not name.strip():
        raise RecordError("bad_tool_call", f"{where}.function.name must be a non-empty string")
    arguments = _arguments(function.get("arguments", {}), f"{where}.function.arguments")
    call_id = value.get("id")
    if call_id is None:
        call_id = f"call{number:05d}"
    elif not isinstance(call_id, str):
        raise RecordError("bad_tool_call", f"{where}.id must be a string")
    return {"id": call_id, "type": "function",
            "function": {"name": name, "arguments": arguments}}


def tools_list(value: Any, where: str) -> list[dict[str, Any]] | None:
    """A record's tool definitions: a list (or a JSON string of one, as LLaMA-Factory
    stores them) of function schemas, each wrapped as ``{type: function, function}``."""
    if value is None:
        return None
    if isinstance(value, str) and not value.strip():
        return None
    value = _parsed(value, "bad_tools", f"'{where}'")
    if not isinstance(value, list):
        raise RecordError("bad_tools", f"'{where}' must be a list of function definitions")
    tools = []
    for n, tool in enumerate(value, start=1):
        function = tool.get("function", tool) if isinstance(tool, dict) else None
        if not isinstance(function, dict) or not isinstance(function.get("name"), str):
            raise RecordError("bad_tools", f"{where}[{n}] is not a function definition "
                                           "(expected {name, description, parameters})")
        tools.append({"type": "function", "function": function})
    return tools or None


def _reasoning(turn: dict[str, Any], where: str) -> str | None:
    for key in _REASONING:
        value = turn.get(key)
        if value is not None:
            if not isinstance(value, str):
                raise RecordError("wrong_type", f"{where}.{key} must be a string")
            return value or None
    return None


def _trained(turn: dict[str, Any], where: str) -> bool:
    """A turn marked ``train: false`` or ``weight: 0`` (Axolotl's spelling) stays
    context."""
    flag = turn.get("train", turn.get("weight", True))
    if flag not in (True, False, 0, 1):
        raise RecordError("wrong_type", f"{where}.train must be true or false")
    return bool(flag)


def conversation(turns: Any, list_key: str, role_key: str, content_key: str,
                 roles: dict[str, str]) -> list[Message]:
    """The canonical messages of one conversation written as ``turns``."""
    if not isinstance(turns, list):
        raise RecordError("wrong_type", f"'{list_key}' must be a list, got {type(turns).__name__}")
    messages: list[Message] = []
    calls = 0
    for n, turn in enumerate(turns, start=1):
        where = f"{list_key}[{n}]"
        if not isinstance(turn, dict):
            raise RecordError("wrong_type", f"{where} must be an object")
        written = turn.get(role_key)
        if not isinstance(written, str):
            raise RecordError("wrong_type", f"{where}.{role_key} must be a string")
        if written not in roles:
            raise RecordError("unknown_role", f"{where}.{role_key} is '{written}'; expected "
                                              f"one of {', '.join(roles)}")
        role = roles[written]
        if written == "function_call":  # ShareGPT: the call(s) as JSON text
            parsed = _parsed(turn.get(content_key), "bad_tool_call", f"{where}.{content_key}")
            message: Message = {"role": "assistant", "content": "",
                                "tool_calls": parsed if isinstance(parsed, list) else [parsed]}
            previous = messages[-1] if messages else None
            if previous and previous["role"] == "assistant" and "tool_calls" not in previous:
                message["content"] = messages.pop()["content"]  # text, then its calls
        else:
            message = {"role": role,
                       "content": _content(turn.get(content_key), f"{where}.{content_key}",
                                           role)}
            if role == "assistant" and turn.get("tool_calls") is not None:
                message["tool_calls"] = turn["tool_calls"]
        if role == "assistant":
            if "tool_calls" in message:
                raw_calls = message["tool_calls"]
                if not isinstance(raw_calls, list):
                    raise RecordError("bad_tool_call", f"{where}.tool_calls must be a list")
                message["tool_calls"] = [tool_call(c, f"{where}.tool_calls[{k}]", calls + k)
                                         for k, c in enumerate(raw_calls, start=1)]
                calls += len(raw_calls)
                if not message["tool_calls"]:
                    del message["tool_calls"]
            reasoning = _reasoning(turn, where)
            if reasoning is not None:
                message["reasoning_content"] = reasoning
            if not _trained(turn, where):
                message["train"] = False
        if role == "tool":
            _answer(message, turn, messages, where, written)
        messages.append(message)
    return messages


def _answer(message: Message, turn: dict[str, Any], before: list[Message], where: str,
            written: str) -> None:
    """Fill a tool result's ``tool_call_id`` and ``name`` from the call it answers (the
    n-th result after a turn answers its n-th call), refusing a result with no call."""
    results = 0
    for earlier in reversed(before):
        if earlier["role"] != "tool":
            break
        results += 1
    caller = before[-1 - results] if len(before) > results else None
    if caller is None or not caller.get("tool_calls"):
        raise RecordError("tool_result_without_call",
                          f"{where} is a '{written}' result with no assistant tool call "
                          "before it")
    calls = caller["tool_calls"]
    call_id = turn.get("tool_call_id")
    if call_id is not None:
        matching = [c for c in calls if c["id"] == call_id]
        if not matching:
            raise RecordError("tool_result_without_call",
                              f"{where}.tool_call_id '{call_id}' answers no call of the "
                              "assistant turn before it")
        call = matching[0]
    elif results < len(calls):
        call = calls[results]
    else:
        raise RecordError("tool_result_without_call",
                          f"{where} is result {results + 1} after a turn of {len(calls)} "
                          "tool call(s)")
    name = turn.get("name")
    message["tool_call_id"] = call["id"]
    message["name"] = name if isinstance(name, str) and name else call["function"]["name"]


def as_context(messages: tuple[Message, ...] | list[Message]) -> tuple[Message, ...]:
    """``messages`` with every assistant turn marked ``train: false``: a prompt before the
    reply a preference record is about."""
    return tuple({**m, "train": False} if m["role"] == "assistant" else m for m in messages)
