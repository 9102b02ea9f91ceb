"""Tool-calling conversations on real chat templates, against an independent reference of
what must be trained.

The templates are llama.cpp's collection (``tests/fixtures/chat_templates``). The reference
renders with transformers' public ``apply_chat_template(messages, tools=...)`` and never
compares renderings: it finds each message by searching, in order, for text the test made
unique (a user's words, a word of each tool result, a reply, each call's function name and
argument values), and takes from a table written per template, from knowledge of its
model family (every template of the collection has an entry; those that know no tools,
for ``real_templates.py``'s plain conversations, have no ``calls``):

- ``stops``: the family's stop tokens, what its ``generation_config.json`` lists as
  ``eos_token_id`` (Llama 3.x ``<|eot_id|>``/``<|eom_id|>``, ChatML ``<|im_end|>``,
  gpt-oss ``<|return|>``/``<|call|>``, GLM ``<|user|>``/``<|observation|>`` ...);
- ``calls``: where the model's own output starts in a turn that only calls tools: the
  first of these markers the template writes before the first function name
  (``<tool_call>``, ``[TOOL_CALLS]``, ``<|tool_calls_section_begin|>``, the JSON object
  Llama 3.1 writes, the `` to=`` recipient of gpt-oss's header ...);
- ``call_ends``: for the few templates that write no stop token after a call (the tool's
  result follows in the same turn, or the template leaves it out), where the call ends.

A reply with text is trained from its text (never the scaffolding before it, such as an
empty ``<think></think>``); a tool-call turn from its call markup (whitespace the template
writes before it is, like that before a reply's text, the template's); each through the
first stop token after its last word, provided that comes before the next message's text,
else (a final reply the template closes with nothing) through its last word. Parallel calls
a template writes as messages in a row (``<|eom|>`` between them) are one span: the model
writes them all before any result comes back. The expected mask is every token overlapping
those spans. A conversation the reference finds nothing to train in (transformers cannot
render it, the template drops a call) must be refused.

Tokenizers are real ones (``llama_cpp_material.real_tokenizer``: Llama 3's, Qwen 2's,
Llama 2's and Gemma's vocabularies) with the family's markers (turn, stop and tool-call
tokens) added as special tokens and its BOS/EOS set, as the real model's tokenizer has
them: the other families' vocabularies are not in llama.cpp's tree. The families on one
base vocabulary share one tokenizer per process (``family_tokenizer``).

``python tests/data/tool_templates.py`` prints the README's table.
"""

from __future__ import annotations

import functools
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lorapipe.components import UnrenderableConversation
from lorapipe.errors import UserError
from lorapipe.plugins.templates.tokenizer import TokenizerTemplate

TEMPLATES = Path(__file__).resolve().parents[1] / "fixtures" / "chat_templates"

TOOLS = [
    {"type": "function", "function": {
        "name": "get_weather", "description": "Current weather in a city.",
        "parameters": {"type": "object", "required": ["city"], "properties": {
            "city": {"type": "string", "description": "The city's name."}}}}},
    {"type": "function", "function": {
        "name": "get_time", "description": "Current local time in a time zone.",
        "parameters": {"type": "object", "required": ["timezone"], "properties": {
            "timezone": {"type": "string", "description": "An IANA time zone."}}}}},
]


def _call(n: int, name: str, arguments: dict[str, str]) -> dict[str, Any]:
    # nine alphanumerics: Mistral's templates refuse any other id
    return {"id": f"call0000{n}", "type": "function",
            "function": {"name": name, "arguments": arguments}}


def _calls(*calls: dict[str, Any]) -> dict[str, Any]:
    return {"role": "assistant", "content": "", "tool_calls": list(calls)}


def _result(n: int, name: str, content: str) -> dict[str, str]:
    return {"role": "tool", "tool_call_id": f"call0000{n}", "name": name, "content": content}


WEATHER = _call(1, "get_weather", {"city": "Lyon"})
TIME = _call(2, "get_time", {"timezone": "Asia/Tokyo"})
WEATHER_RESULT = _result(1, "get_weather", '{"temperature_c": 18, "sky": "overcast"}')
TIME_RESULT = _result(2, "get_time", '{"local_time": "21:40"}')
# The reference finds a tool result by this word of it: templates escape or re-wrap the rest.
RESULT_WORDS = {WEATHER_RESULT["content"]: "overcast", TIME_RESULT["content"]: "21:40"}
SYSTEM = {"role": "system", "content": "You are a terse assistant for travellers."}
ONE_CALL = [
    {"role": "user", "content": "What is the weather like in Lyon today?"},
    _calls(WEATHER), WEATHER_RESULT,
    {"role": "assistant", "content": "Lyon is cloudy at 18 degrees."},
]
CONVERSATIONS = {
    "one call": ONE_CALL,
    "parallel": [
        {"role": "user", "content": "How is the weather in Lyon, and what time is it in Tokyo?"},
        _calls(WEATHER, TIME), WEATHER_RESULT, TIME_RESULT,
        {"role": "assistant", "content": "Cloudy and 18 degrees in Lyon; evening in Tokyo."},
    ],
    "call after call": [
        {"role": "user", "content": "Check the weather in Lyon first, then the time in Tokyo."},
        _calls(WEATHER), WEATHER_RESULT, _calls(TIME), TIME_RESULT,
        {"role": "assistant", "content": "It is cloudy in Lyon and evening in Tokyo."},
    ],
    "system + call": [SYSTEM, *ONE_CALL],
}


@dataclass(frozen=True)
class Vocab:
    """A real base vocabulary with a family's markers as single added tokens."""

    base: str  # a llama_cpp_material.real_tokenizer name
    markers: tuple[str, ...] = ()
    bos: str | None = None  # None: the base's own
    eos: str | None = None
    # a tokenizer of its own: the family writes as text another family's markers
    alone: bool = False


@dataclass(frozen=True)
class Family:
    vocab: Vocab
    stops: tuple[str, ...]
    calls: tuple[str, ...]
    call_ends: tuple[str, ...] = ()


_QWEN_TOOLS = ("<tool_call>", "</tool_call>", "<tool_response>", "</tool_response>",
               "<think>", "</think>")
QWEN = Vocab("qwen2", ("<|im_start|>", "<|im_end|>", *_QWEN_TOOLS))
LLAMA3 = Vocab("llama3", ("<|eom_id|>", "<|python_tag|>"))
HERMES3 = Vocab("llama3", ("<|im_start|>", "<|im_end|>", *_QWEN_TOOLS), eos="<|im_end|>")
MISTRAL = Vocab("llama3", (  # Tekken is a tiktoken BPE like Llama 3's
    "[INST]", "[/INST]", "[TOOL_CALLS]", "[AVAILABLE_TOOLS]", "[/AVAILABLE_TOOLS]",
    "[TOOL_RESULTS]", "[/TOOL_RESULTS]", "[TOOL_CONTENT]", "[CALL_ID]", "[ARGS]",
    "[SYSTEM_PROMPT]", "[/SYSTEM_PROMPT]", "[THINK]", "[/THINK]"), bos="<s>", eos="</s>")
_DEEPSEEK = ("<｜User｜>", "<｜Assistant｜>", "<think>", "</think>", "<｜tool▁calls▁begin｜>",
             "<｜tool▁calls▁end｜>", "<｜tool▁call▁begin｜>", "<｜tool▁call▁end｜>",
             "<｜tool▁sep｜>", "<｜tool▁outputs▁begin｜>", "<｜tool▁outputs▁end｜>",
             "<｜tool▁output▁begin｜>", "<｜tool▁output▁end｜>")
DEEPSEEK = Vocab("llama3", _DEEPSEEK, bos="<｜begin▁of▁sentence｜>", eos="<｜end▁of▁sentence｜>")
DEEPSEEK_QWEN = Vocab("qwen2", _DEEPSEEK, bos="<｜begin▁of▁sentence｜>",
                      eos="<｜end▁of▁sentence｜>")
COHERE = Vocab("llama3", (
    "<|START_OF_TURN_TOKEN|>", "<|END_OF_TURN_TOKEN|>", "<|USER_TOKEN|>", "<|CHATBOT_TOKEN|>",
    "<|SYSTEM_TOKEN|>", "<|START_ACTION|>", "<|END_ACTION|>", "<|START_TOOL_RESULT|>",
    "<|END_TOOL_RESULT|>", "<|START_THINKING|>", "<|END_THINKING|>", "<|START_RESPONSE|>",
    "<|END_RESPONSE|>", "<|START_TEXT|>", "<|END_TEXT|>"), bos="<BOS_TOKEN>",
    eos="<|END_OF_TURN_TOKEN|>")
GLM = Vocab("qwen2", ("[gMASK]", "<sop>", "<|system|>", "<|user|>", "<|assistant|>",
                      "<|observation|>", *_QWEN_TOOLS, "<arg_key>", "</arg_key>",
                      "<arg_value>", "</arg_value>"))
KIMI = Vocab("qwen2", ("<|im_user|>", "<|im_assistant|>", "<|im_system|>", "<|im_middle|>",
                       "<|im_end|>", "<|tool_calls_section_begin|>",
                       "<|tool_calls_section_end|>", "<|tool_call_begin|>",
                       "<|tool_call_argument_begin|>", "<|tool_call_end|>", "<think>",
                       "</think>"))
# Laguna's calls are GLM's: its argument tags are tokens, as they are GLM's
LAGUNA = Vocab("qwen2", ("<assistant>", "</assistant>", *_QWEN_TOOLS, "<arg_key>", "</arg_key>",
                         "<arg_value>", "</arg_value>"))
LFM2 = Vocab("qwen2", ("<|im_start|>", "<|im_end|>", "<|tool_list_start|>", "<|tool_list_end|>",
                       "<|tool_call_start|>", "<|tool_call_end|>", "<|tool_response_start|>",
                       "<|tool_response_end|>", "<think>", "</think>"))
GEMMA4 = Vocab("gemma", ("<|turn>", "<turn|>", "<|tool>", "<tool|>", "<|tool_call>", "<tool_call|>",
                        "<|tool_response>", "<tool_response|>", '<|"|>', "<|channel>",
                        "<channel|>", "<|think|>"), bos="<bos>", eos="<eos>")
GRANITE = Vocab("llama3", ("<|start_of_role|>", "<|end_of_role|>", "<|tool_call|>",
                           *_QWEN_TOOLS), eos="<|end_of_text|>")

_CHATML = (("<|im_end|>", "<|endoftext|>"), ("<tool_call>",))
_LLAMA3_STOPS = ("<|eot_id|>", "<|eom_id|>", "<|end_of_text|>")
_DEEPSEEK_STOP = ("<｜end▁of▁sentence｜>",)
# R1's template writes a call after a tool output without the calls-begin token
_DEEPSEEK_CALLS = ("<｜tool▁calls▁begin｜>", "<｜tool▁call▁begin｜>")

FAMILIES = {
    "Apertus-8B-Instruct": Family(
        Vocab("llama3", ("<|system_start|>", "<|system_end|>", "<|developer_start|>",
                         "<|developer_end|>", "<|user_start|>", "<|user_end|>",
                         "<|assistant_start|>", "<|assistant_end|>", "<|inner_prefix|>",
                         "<|inner_suffix|>", "<|tools_prefix|>", "<|tools_suffix|>")),
        ("<|assistant_end|>",), ("<|tools_prefix|>",), call_ends=("<|tools_suffix|>",)),
    "Apriel-1.6-15b-Thinker-fixed": Family(
        Vocab("llama3", ("<|begin_system|>", "<|begin_user|>", "<|begin_assistant|>",
                         "<|begin_tool_result|>", "<|begin_content|>", "<|end|>"),
              bos="<s>", eos="</s>"),
        ("<|end|>", "</s>"), ("<tool_calls>",)),
    "Bielik-11B-v3.0-Instruct": Family(
        Vocab("llama2-spm", ("<|im_start|>", "<|im_end|>", *_QWEN_TOOLS, "<|function_list|>",
                             "<|function_output|>"), eos="<|im_end|>"), *_CHATML),
    "ByteDance-Seed-OSS": Family(
        Vocab("qwen2", ("<seed:bos>", "<seed:eos>", "<seed:pad>", "<seed:think>",
                        "</seed:think>", "<seed:tool_call>", "</seed:tool_call>",
                        "<seed:cot_budget_reflect>", "</seed:cot_budget_reflect>"),
              bos="<seed:bos>", eos="<seed:eos>"),
        ("<seed:eos>",), ("<seed:tool_call>",)),
    "Cohere2MoE": Family(COHERE, ("<|END_OF_TURN_TOKEN|>",), ("<|START_ACTION|>",)),
    # Command R+ writes no end-of-turn after its actions: the call ends with its code fence
    "CohereForAI-c4ai-command-r-plus-tool_use": Family(
        COHERE, ("<|END_OF_TURN_TOKEN|>",), ("Action:",), call_ends=("```",)),
    "CohereForAI-c4ai-command-r7b-12-2024-tool_use": Family(
        COHERE, ("<|END_OF_TURN_TOKEN|>",), ("<|START_ACTION|>",)),
    "GLM-4.6": Family(GLM, ("<|user|>", "<|observation|>", "<|endoftext|>"), ("<tool_call>",)),
    "GLM-4.7-Flash": Family(GLM, ("<|user|>", "<|observation|>", "<|endoftext|>"),
                            ("<tool_call>",)),
    # llama.cpp's GigaChat 3 parser: a call is "<|message_sep|>\n\nfunction call<|role_sep|>"
    # after the (empty) reply, in the model's own output
    "GigaChat3-10B-A1.8B": Family(
        Vocab("llama3", ("<|message_sep|>", "<|role_sep|>")),
        ("<|message_sep|>",), ("<|message_sep|>\n\nfunction call",)),
    "GigaChat3.1-10B-A1.8B": Family(
        Vocab("llama3", ("<|message_sep|>", "<|role_sep|>", "<|function_call|>")),
        ("<|message_sep|>",), ("<|function_call|>",)),
    "HuggingFaceTB-SmolLM3-3B": Family(QWEN, *_CHATML),
    "Kimi-K2-Instruct": Family(KIMI, ("<|im_end|>",), ("<|tool_calls_section_begin|>",)),
    "Kimi-K2-Thinking": Family(KIMI, ("<|im_end|>",), ("<|tool_calls_section_begin|>",)),
    "Kimi-K3": Family(Vocab("qwen2", ("<|open|>", "<|close|>", "<|sep|>", "<|end_of_msg|>")),
                      ("<|end_of_msg|>",), ("<|open|>tools",)),
    "LFM2-8B-A1B": Family(LFM2, ("<|im_end|>",), ("<|tool_call_start|>",)),
    "LFM2.5-8B-A1B": Family(LFM2, ("<|im_end|>",), ("<|tool_call_start|>",)),
    "LFM2.5-Instruct": Family(LFM2, ("<|im_end|>",), ("<|tool_call_start|>",)),
    "MiMo-VL": Family(QWEN, *_CHATML),
    "MiniMax-M1": Family(
        Vocab("qwen2", ("<beginning_of_sentence>", "<end_of_sentence>", "<tool_calls>",
                        "</tool_calls>")), ("<end_of_sentence>",), ("<tool_calls>",)),
    "MiniMax-M2": Family(
        Vocab("qwen2", ("]~!b[", "]~b]", "[e~[", "<think>", "</think>", "<minimax:tool_call>",
                        "</minimax:tool_call>")), ("[e~[",), ("<minimax:tool_call>",)),
    "MiniMax-M3": Family(
        Vocab("qwen2", ("]~!b[", "]~b]", "[e~[", "<mm:think>", "</mm:think>",
                        "]<]minimax[>["), alone=True), ("[e~[",), ("]<]minimax[>[<tool_call>",)),
    "Mistral-Small-3.2-24B-Instruct-2506": Family(MISTRAL, ("</s>",), ("[TOOL_CALLS]",)),
    "NVIDIA-Nemotron-3-Nano-30B-A3B-BF16": Family(QWEN, *_CHATML),
    "NVIDIA-Nemotron-Nano-v2": Family(
        Vocab("llama3", ("<SPECIAL_10>", "<SPECIAL_11>", "<SPECIAL_12>", "<TOOLCALL>",
                         "</TOOLCALL>", "<think>", "</think>"), eos="<SPECIAL_12>"),
        ("<SPECIAL_12>",), ("<TOOLCALL>",)),
    "NousResearch-Hermes-2-Pro-Llama-3-8B-tool_use": Family(HERMES3, *_CHATML),
    "NousResearch-Hermes-3-Llama-3.1-8B-tool_use": Family(HERMES3, *_CHATML),
    "Qwen-QwQ-32B": Family(QWEN, *_CHATML),
    "Qwen-Qwen2.5-7B-Instruct": Family(QWEN, *_CHATML),
    "Qwen-Qwen3-0.6B": Family(QWEN, *_CHATML),
    "Qwen3-Coder": Family(QWEN, *_CHATML),
    "Qwen3.5-4B": Family(QWEN, *_CHATML),
    "Reka-Edge": Family(Vocab("qwen2", ("<sep>", *_QWEN_TOOLS)), ("<sep>",), ("<tool_call>",)),
    "Spark2.5": Family(
        Vocab("llama3", ("<｜start▁of▁sentence｜>", "<｜end▁of▁sentence｜>", "<|User|>",
                         "<|Bot|>", "<|Tool|>", "<|System|>", *_QWEN_TOOLS)),
        _DEEPSEEK_STOP, ("<tool_call>",)),
    "StepFun3.5-Flash": Family(QWEN, *_CHATML),
    "deepseek-ai-DeepSeek-R1-Distill-Llama-8B": Family(
        DEEPSEEK, _DEEPSEEK_STOP, _DEEPSEEK_CALLS),
    "deepseek-ai-DeepSeek-R1-Distill-Qwen-32B": Family(
        DEEPSEEK_QWEN, _DEEPSEEK_STOP, _DEEPSEEK_CALLS),
    "deepseek-ai-DeepSeek-V3.1": Family(DEEPSEEK, _DEEPSEEK_STOP, _DEEPSEEK_CALLS),
    "deepseek-ai-DeepSeek-V3.2": Family(DEEPSEEK, _DEEPSEEK_STOP, ("<｜DSML｜function_calls>",)),
    "deepseek-ai-DeepSeek-V4-Flash-0731": Family(DEEPSEEK, _DEEPSEEK_STOP,
                                                 ("<｜DSML｜tool_calls>",)),
    "deepseek-ai-DeepSeek-V4": Family(DEEPSEEK, _DEEPSEEK_STOP, ("<｜DSML｜tool_calls>",)),
    "fireworks-ai-llama-3-firefunction-v2": Family(LLAMA3, _LLAMA3_STOPS, (" functools[",)),
    # The three templates that know no tools (no call markup): for the plain conversations
    # of real_templates.py. Gemma 2: generation_config.json's eos_token_id [1, 107].
    "google-gemma-2-2b-it": Family(Vocab("gemma", bos="<bos>", eos="<eos>"),
                                   ("<eos>", "<end_of_turn>"), ()),
    # Gemma 4 stops on the <|tool_response> it writes after a call (the runtime fills it in)
    "google-gemma-4-31B-it-interleaved": Family(
        GEMMA4,
        ("<turn|>", "<|tool_response>", "<eos>"), ("<|tool_call>",)),
    "google-gemma-4-31B-it": Family(
        GEMMA4,
        ("<turn|>", "<|tool_response>", "<eos>"), ("<|tool_call>",)),
    "ibm-granite-granite-3.3-2B-Instruct": Family(GRANITE, ("<|end_of_text|>",),
                                                  ("<|tool_call|>",)),
    "ibm-granite-granite-4.0": Family(GRANITE, ("<|end_of_text|>",), ("<tool_call>",)),
    "ibm-granite-granite-4.1": Family(GRANITE, ("<|end_of_text|>",), ("<tool_call>",)),
    "inclusionai-ling-3.0-flash": Family(
        Vocab("qwen2", ("<role>", "</role>", "<|role_end|>", *_QWEN_TOOLS, "<arg_key>",
                        "</arg_key>", "<arg_value>", "</arg_value>")),
        ("<|role_end|>",), ("<tool_call>",)),
    "llama-cpp-deepseek-r1": Family(DEEPSEEK, _DEEPSEEK_STOP, _DEEPSEEK_CALLS),
    # RWKV World: llama.cpp's converter sets token 261, "\n\n", as its end of turn (BOS
    # and EOS are token 0, "<s>"). Its vocabulary (rwkv_vocab_v20230424, greedy longest
    # match) is not in llama.cpp's tree: Llama 3's, with "\n\n" as one token, as RWKV's
    # writes it after each reply here (it has no ".\n\n" token)
    "llama-cpp-rwkv-world": Family(Vocab("llama3", ("\n\n",), bos="<s>", eos="<s>",
                                         alone=True), ("\n\n",), ()),
    "meetkai-functionary-medium-v3.1": Family(LLAMA3, _LLAMA3_STOPS,
                                              ("<function=", "<|python_tag|>")),
    "meetkai-functionary-medium-v3.2": Family(LLAMA3, _LLAMA3_STOPS, (">>>",)),
    # Llama 3.1's custom tools: a bare JSON object (<|python_tag|> is for built-in tools)
    "meta-llama-Llama-3.1-8B-Instruct": Family(LLAMA3, _LLAMA3_STOPS,
                                               ("<|python_tag|>", '{"name"')),
    "meta-llama-Llama-3.2-3B-Instruct": Family(LLAMA3, _LLAMA3_STOPS,
                                               ("<|python_tag|>", '{"name"')),
    "meta-llama-Llama-3.3-70B-Instruct": Family(LLAMA3, _LLAMA3_STOPS,
                                                ("<|python_tag|>", '{"name"')),
    # Phi-3.5: eos_token_id [32007, 32001, 32000]; its markers are the vocabulary's own
    "microsoft-Phi-3.5-mini-instruct": Family(Vocab("phi3"),
                                              ("<|end|>", "<|assistant|>", "<|endoftext|>"), ()),
    "mistralai-Ministral-3-14B-Reasoning-2512": Family(MISTRAL, ("</s>",), ("[TOOL_CALLS]",)),
    "mistralai-Mistral-Nemo-Instruct-2407": Family(MISTRAL, ("</s>",), ("[TOOL_CALLS]",)),
    "moonshotai-Kimi-K2": Family(KIMI, ("<|im_end|>",), ("<|tool_calls_section_begin|>",)),
    # a call is the recipient of the assistant's header: "<|start|>assistant to=..."
    # <|eom|> ends one of several messages the model writes in a row (parallel calls)
    "muse-glimmer": Family(Vocab("qwen2", ("<|start|>", "<|message|>", "<|eot|>", "<|eom|>")),
                           ("<|eot|>",), (" to=",)),
    "openai-gpt-oss-120b": Family(
        Vocab("qwen2", ("<|start|>", "<|channel|>", "<|message|>", "<|constrain|>", "<|end|>",
                        "<|return|>", "<|call|>")),
        ("<|return|>", "<|call|>", "<|endoftext|>"), (" to=",)),
    "openbmb-MiniCPM5-1B": Family(QWEN, ("<|im_end|>",), ("<function name=",)),
    "poolside-Laguna-S-2.1": Family(
        LAGUNA, ("</assistant>",),
        ("<tool_call>",)),
    "poolside-Laguna-XS-2.1": Family(
        LAGUNA, ("</assistant>",),
        ("<tool_call>",)),
    "poolside-Laguna-XS.2": Family(
        LAGUNA, ("</assistant>",),
        ("<tool_call>",)),
    "tencent-Hy3": Family(
        Vocab("qwen2", ("<｜hy_begin_of_sentence:opensource｜>", "<｜hy_eos:opensource｜>",
                        "<｜hy_pad:opensource｜>", "<｜hy_User:opensource｜>",
                        "<｜hy_Assistant:opensource｜>", "<think:opensource>",
                        "</think:opensource>", "<tool_calls:opensource>",
                        "</tool_calls:opensource>")),
        ("<｜hy_eos:opensource｜>",), ("<tool_calls:opensource>",)),
    "unsloth-Apriel-1.5": Family(
        Vocab("llama3", ("<|system|>", "<|user|>", "<|assistant|>", "<|tool_result|>",
                         "<|content|>", "<|end|>"), bos="<s>", eos="</s>", alone=True),
        ("<|end|>", "</s>"), ("<tool_calls>",)),
    "unsloth-mistral-Devstral-Small-2507": Family(MISTRAL, ("</s>",), ("[TOOL_CALLS]",)),
    "upstage-Solar-Open-100B": Family(
        Vocab("qwen2", ("<|begin|>", "<|end|>", "<|content|>", "<|think|>", "<|calls|>",
                        "<|tool_calls|>", "<|tool_call:begin|>", "<|tool_call:name|>",
                        "<|tool_call:args|>", "<|tool_call:end|>", "<|tool_response|>",
                        "<|tool_response:begin|>", "<|tool_response:end|>")),
        ("<|end|>", "<|calls|>"), ("<|tool_calls|>",)),
}


class NoReference(Exception):
    """The reference finds no reply to train in the conversation: only a refusal is right."""


def _find(text: str, needle: str, start: int, what: str) -> int:
    at = text.find(needle, start)
    if at < 0:
        raise NoReference(f"the template does not render {what} ({needle!r})")
    return at


def _first(text: str, needles: tuple[str, ...], start: int, stop: int) -> tuple[int, int] | None:
    """(start, end) of the earliest of ``needles`` in ``text[start:stop]``."""
    found = [(at, at + len(n)) for n in needles if (at := text.find(n, start, stop)) >= 0
             and at + len(n) <= stop]
    return min(found) if found else None


def reference_spans(messages: list[dict[str, Any]], tools: list[dict[str, Any]] | None,
                    tokenizer: Any, template: str, family: Family
                    ) -> tuple[str, list[tuple[int, int]]]:
    """The rendered text and the character spans to train (raises NoReference)."""
    try:
        text = tokenizer.apply_chat_template(messages, tools=tools, tokenize=False,
                                             chat_template=template)
    except Exception as err:  # what a template raises, or jinja2's sandbox
        raise NoReference(f"transformers cannot render it: {type(err).__name__}: {err}"
                          ) from None
    # Each message's place, in order: (first, end) of its own text; of a call turn, from
    # its first function name to the end of its last argument value.
    places: list[tuple[int, int]] = []
    cursor = 0
    for i, message in enumerate(messages):
        role = message["role"]
        if role == "system":
            places.append((cursor, cursor))  # wherever the template folds it
        elif role == "tool":
            word = RESULT_WORDS[message["content"]]
            at = _find(text, word, cursor, "a tool result")
            places.append((at, at + len(word)))
        elif message.get("tool_calls"):
            first = None
            for call in message["tool_calls"]:
                cursor = _find(text, call["function"]["name"], cursor, "the call")
                first = cursor if first is None else first
                for value in call["function"]["arguments"].values():
                    cursor = _find(text, value, cursor, "the call's arguments") + len(value)
            places.append((first, cursor))
        else:
            at = _find(text, message["content"], cursor, f"message {i + 1}")
            places.append((at, at + len(message["content"])))
        cursor = places[-1][1]

    spans = []
    for i, message in enumerate(messages):
        if message["role"] != "assistant":
            continue
        limit = places[i + 1][0] if i + 1 < len(places) else len(text)
        if not message.get("tool_calls"):
            start, end = places[i]
            stop = _first(text, family.stops, end, limit)
            spans.append((start, stop[1] if stop else end))
            continue
        low, (first, end) = places[i - 1][1], places[i]
        markup = _first(text, family.calls, low, first)
        if markup is None:
            raise NoReference(f"the reference knows no call markup in {text[low:first]!r}")
        stop = _first(text, family.stops, end, limit) or _first(text, family.call_ends, end,
                                                                limit)
        if stop is None:
            raise NoReference(f"no end of turn after the call: {text[end:limit]!r}")
        spans.append((markup[0], stop[1]))
    return text, spans


def family_tokenizer(vocab: Vocab) -> Any:
    """The real base vocabulary with the family's markers as added tokens and its BOS/EOS.

    Building a tokenizer costs a second or two, so the families on one base share one, with
    all their markers added, unless one writes another's as text (``Vocab.alone``;
    ``foreign_markers`` finds them)."""
    tokenizer, bos, eos, _ = _tokenizer(vocab.base, vocab if vocab.alone else None)
    tokenizer.bos_token, tokenizer.eos_token = vocab.bos or bos, vocab.eos or eos
    return tokenizer


@functools.cache
def _tokenizer(base: str, alone: Vocab | None) -> tuple[Any, str, str, frozenset[str]]:
    """The tokenizer, its own BOS and EOS, and its own added tokens."""
    from llama_cpp_material import real_tokenizer
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(real_tokenizer(base))
    own = (tokenizer.bos_token, tokenizer.eos_token, frozenset(tokenizer.get_added_vocab()))
    tokenizer.add_special_tokens({"additional_special_tokens": sorted(_added(base, alone))},
                                 replace_extra_special_tokens=False)
    return tokenizer, *own


def _added(base: str, alone: Vocab | None) -> set[str]:
    """What the families sharing a tokenizer add to its base."""
    vocabs = [alone] if alone else [f.vocab for f in FAMILIES.values()
                                     if f.vocab.base == base and not f.vocab.alone]
    return {m for v in vocabs for m in (*v.markers, v.bos, v.eos) if m}


def foreign_markers(text: str, vocab: Vocab) -> list[str]:
    """Markers in ``text`` that the shared tokenizer keeps whole and the family's own
    would not: another family's, not the base vocabulary's."""
    alone = vocab if vocab.alone else None
    base_added = _tokenizer(vocab.base, alone)[3]
    own = {*vocab.markers, vocab.bos, vocab.eos}
    return [m for m in sorted(_added(vocab.base, alone) - own - base_added) if m in text]


def check(template_path: Path, conversation: str) -> str:
    """``trained correctly``, or ``refused: <reason>``; raises AssertionError when lorapipe
    trains anything but the reference's tokens, or trains what the reference finds no reply
    in."""
    return judge(template_path, CONVERSATIONS[conversation], TOOLS)


def judge(template_path: Path, messages: list[dict[str, Any]],
          tools: list[dict[str, Any]] | None) -> str:
    """``check`` for any conversation (``tools=None``: a plain one, as
    ``real_templates.py`` judges them), on the template's family tokenizer."""
    family = FAMILIES[template_path.stem]
    template = template_path.read_text(encoding="utf-8")
    tokenizer = family_tokenizer(family.vocab)
    tokenizer.chat_template = template
    try:
        # The family's stop tokens, as lorapipe reads them from a real model's
        # generation_config.json (these tokenizers have none beside them).
        options = TokenizerTemplate.Options(stop_tokens=list(family.stops))
        encoded = TokenizerTemplate(options, field="data.template").encode(
            messages, tokenizer, tools=tools)
    except (UnrenderableConversation, UserError) as err:
        return f"refused: {err}".splitlines()[0][:160]
    try:
        text, spans = reference_spans(messages, tools, tokenizer, template, family)
    except NoReference as err:
        raise AssertionError(f"trained, but the reference finds nothing to train: {err}"
                             ) from None
    assert not foreign_markers(text, family.vocab), foreign_markers(text, family.vocab)
    reference = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    assert encoded.input_ids == reference["input_ids"], "token ids differ from the rendering"
    expected = [any(start < e and s < end for s, e in spans)
                for start, end in reference["offset_mapping"]]
    assert encoded.trainable == expected, [
        ("trained" if a else "not trained", tokenizer.decode([t]))
        for t, a, b in zip(encoded.input_ids, encoded.trainable, expected, strict=True)
        if a != b]
    return "trained correctly"


def judged(path: Path) -> bool:
    """Whether the template is one this reference judges: it mentions tools."""
    return "tool" in path.read_text(encoding="utf-8")


def main() -> int:
    paths = [p for p in sorted(TEMPLATES.glob("*.jinja")) if judged(p)]
    print("| template | " + " | ".join(CONVERSATIONS) + " |")
    print("|---|" + "---|" * len(CONVERSATIONS))
    unjudged: dict[tuple[str, str], list[str]] = {}
    for path in paths:
        cells = []
        family = FAMILIES[path.stem]
        for name, messages in CONVERSATIONS.items():
            try:
                outcome = check(path, name)
            except Exception as err:  # a wrong mask, or lorapipe failing
                outcome = f"FAILED: {type(err).__name__}: {err}"[:160]
            cells.append("yes" if outcome == "trained correctly" else outcome.replace("|", "/"))
            try:
                reference_spans(messages, TOOLS, family_tokenizer(family.vocab),
                                path.read_text(encoding="utf-8"), family)
            except NoReference as err:
                unjudged.setdefault((path.stem, str(err)[:120]), []).append(name)
        print(f"| {path.stem} | " + " | ".join(cells) + " |")
    if unjudged:
        print("\nNothing to train, by the reference (only a refusal is right):\n")
        for (stem, why), names in unjudged.items():
            print(f"- {stem} ({', '.join(names)}): {why}")
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(TEMPLATES.parents[1]))  # tests/, for llama_cpp_material
    sys.exit(main())
