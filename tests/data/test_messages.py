"""Tool calls, tool results and reasoning in every shape files write them, mapped onto the
canonical messages; the malformed ones dropped with their reason."""

from __future__ import annotations

import json

import pytest

from lorapipe.data.schemas import Record, RecordError, to_record

WEATHER = {"name": "get_weather", "description": "Weather in a city",
           "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}
CALL = {"id": "call_1", "type": "function",
        "function": {"name": "get_weather", "arguments": {"city": "Paris"}}}
CANONICAL = (
    {"role": "user", "content": "Weather in Paris?"},
    {"role": "assistant", "content": "", "tool_calls": [CALL]},
    {"role": "tool", "content": "18C", "tool_call_id": "call_1", "name": "get_weather"},
    {"role": "assistant", "content": "It is 18C."},
)


def chat(data: dict) -> Record:
    return to_record(data, "auto", {})


def test_openai_tool_calls_with_string_arguments_and_a_missing_content() -> None:
    call = {**CALL, "function": {**CALL["function"], "arguments": '{"city": "Paris"}'}}
    record = chat({"tools": [{"type": "function", "function": WEATHER}], "messages": [
        CANONICAL[0], {"role": "assistant", "content": None, "tool_calls": [call]},
        {"role": "tool", "content": "18C", "tool_call_id": "call_1"}, CANONICAL[3]]})
    assert record.kind == "chat" and record.messages == CANONICAL
    assert record.tools == [{"type": "function", "function": WEATHER}]


def test_bare_tools_llama_ipython_and_results_matched_to_calls_by_order() -> None:
    """Tools given bare (or as a JSON string), Llama 3.1's ipython role, and results
    without ids: the n-th result answers the n-th call, which names it."""
    time = {"type": "function", "function": {"name": "get_time", "arguments": {}}}
    record = chat({"tools": json.dumps([WEATHER]), "messages": [
        CANONICAL[0],
        {"role": "assistant", "tool_calls": [
            {"type": "function", "function": {"name": "get_weather",
                                              "arguments": {"city": "Paris"}}}, time]},
        {"role": "ipython", "content": {"temp": 18}}, {"role": "tool", "content": "12:00"},
        CANONICAL[3]]})
    calls = record.messages[1]["tool_calls"]
    assert [c["id"] for c in calls] == ["call00001", "call00002"]  # 9 alphanumerics
    assert record.messages[2] == {"role": "tool", "content": '{"temp": 18}',
                                  "tool_call_id": "call00001", "name": "get_weather"}
    assert record.messages[3]["name"] == "get_time"
    assert record.tools == [{"type": "function", "function": WEATHER}]


def test_llama_factory_sharegpt_function_call_and_observation() -> None:
    record = chat({"tools": json.dumps([WEATHER]), "system": "Be brief.", "conversations": [
        {"from": "human", "value": "Weather in Paris?"},
        {"from": "function_call", "value": json.dumps(
            {"name": "get_weather", "arguments": {"city": "Paris"}})},
        {"from": "observation", "value": "18C"},
        {"from": "gpt", "value": "It is 18C."}]})
    assert record.messages[0] == {"role": "system", "content": "Be brief."}
    assert record.messages[2]["tool_calls"][0]["function"] == CALL["function"]
    assert record.messages[3]["name"] == "get_weather"


def test_a_reply_then_its_call_become_one_turn() -> None:
    record = chat({"conversations": [
        {"from": "human", "value": "Weather?"}, {"from": "gpt", "value": "Let me look."},
        {"from": "function_call", "value": json.dumps({"name": "get_weather",
                                                       "arguments": {}})},
        {"from": "observation", "value": "18C"}, {"from": "gpt", "value": "18C."}]})
    assert [m["role"] for m in record.messages] == ["user", "assistant", "tool", "assistant"]
    assert record.messages[1]["content"] == "Let me look."


def test_reasoning_in_either_field_text_parts_and_untrained_turns() -> None:
    record = chat({"messages": [
        {"role": "user", "content": [{"type": "text", "text": "2+"}, {"type": "text",
                                                                    "text": "2?"}]},
        {"role": "assistant", "content": "4", "reasoning_content": "2+2=4", "train": False},
        {"role": "user", "content": "3+3?"},
        {"role": "assistant", "content": "6", "thinking": "3+3=6"}]})
    assert record.messages[0]["content"] == "2+2?"
    assert record.messages[1] == {"role": "assistant", "content": "4",
                                  "reasoning_content": "2+2=4", "train": False}
    assert record.messages[3]["reasoning_content"] == "3+3=6"


def test_text_and_prompt_completion_records() -> None:
    assert chat({"text": "A document."}) == Record("text", text="A document.")
    assert chat({"prompt": "2+2=", "completion": " 4"}) == Record("completion", prompt="2+2=",
                                                                   completion=" 4")
    assert to_record({"body": "x"}, "text", {"text": "body"}).text == "x"


@pytest.mark.parametrize(("messages", "reason", "detail"), [
    ([CANONICAL[0], {"role": "assistant", "tool_calls": [{"type": "retrieval"}]}],
     "bad_tool_call", "is not a function call"),
    ([CANONICAL[0], {"role": "assistant", "tool_calls": [
        {"function": {"name": "f", "arguments": "[1, 2]"}}]}],
     "bad_tool_call", "must be a JSON object"),
    ([CANONICAL[0], {"role": "assistant", "tool_calls": [
        {"function": {"name": "f", "arguments": "{city: Paris}"}}]}],
     "bad_tool_call", "is not JSON"),
    ([CANONICAL[0], {"role": "tool", "content": "18C"}, CANONICAL[3]],
     "tool_result_without_call", "with no assistant tool call before it"),
    ([*CANONICAL[:2], {"role": "tool", "content": "18C", "tool_call_id": "call_9"}],
     "tool_result_without_call", "'call_9' answers no call"),
    ([*CANONICAL[:3], {"role": "tool", "content": "again"}],
     "tool_result_without_call", "result 2 after a turn of 1 tool call"),
    ([{"role": "user", "content": [{"type": "image_url", "image_url": "x"}]}],
     "unsupported_content", "image_url parts"),
])
def test_malformed_tool_data_is_dropped_with_its_reason(messages: list, reason: str,
                                                        detail: str) -> None:
    with pytest.raises(RecordError) as err:
        chat({"messages": messages})
    assert err.value.reason == reason and detail in err.value.detail


def test_bad_tool_definitions_are_named() -> None:
    with pytest.raises(RecordError, match=r"tools\[1\] is not a function definition"):
        chat({"tools": [{"description": "no name"}], "messages": list(CANONICAL)})
