"""chatml, alpaca, vicuna and mistral: rendering, generation prompts and assistant masks."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
from lorapipe_templates.alpaca import AlpacaTemplate
from lorapipe_templates.chatml import IM_END, IM_START, ChatMLTemplate
from lorapipe_templates.mistral import MistralTemplate
from lorapipe_templates.vicuna import VicunaTemplate
from transformers import AutoTokenizer

from lorapipe.components import UnrenderableConversation
from lorapipe.errors import UserError
from lorapipe.model.source import resolve_model_path
from lorapipe.plugin import trained_text
from lorapipe.plugins.templates.tokenizer import TokenizerTemplate
from lorapipe.registry import get_registry

TEMPLATES = [ChatMLTemplate, AlpacaTemplate, VicunaTemplate, MistralTemplate]
SYSTEM = {"role": "system", "content": "You are terse."}
MULTI = [{"role": "user", "content": "What is the capital of France?"},
         {"role": "assistant", "content": "Paris."},
         {"role": "user", "content": "And of Japan?"},
         {"role": "assistant", "content": "Tokyo, since 1868."}]
CONVERSATIONS = {"single": MULTI[:2], "multi": MULTI, "multi+system": [SYSTEM, *MULTI]}

# The standard ChatML chat_template, as Qwen and OpenHermes tokenizers ship it.
HF_CHATML = (
    "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n' + "
    "message['content'] + '<|im_end|>' + '\n'}}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


@pytest.fixture(scope="module")
def tokenizer(lorapipe_cache: Path) -> Any:
    """tiny-llama's tokenizer with the two ChatML markers added as special tokens."""
    tok = AutoTokenizer.from_pretrained(resolve_model_path("tiny-llama"))
    tok.add_tokens([IM_START, IM_END], special_tokens=True)
    return tok


def expected_runs(template: type, messages: list[dict[str, str]], tokenizer: Any) -> list[str]:
    replies = [m["content"] for m in messages if m["role"] == "assistant"]
    if template is ChatMLTemplate:
        return [r + IM_END for r in replies]
    space = "" if template is AlpacaTemplate else " "
    return [space + r + tokenizer.eos_token for r in replies]


@pytest.mark.parametrize("name", CONVERSATIONS)
@pytest.mark.parametrize("template", TEMPLATES, ids=lambda t: t.name)
def test_trained_tokens_are_exactly_the_replies(template: type, name: str, tokenizer: Any) -> None:
    messages = CONVERSATIONS[name]
    encoded = template().encode(messages, tokenizer)
    assert trained_text(encoded, tokenizer) == expected_runs(template, messages, tokenizer)
    last = template().encode(messages, tokenizer, train_on="last_assistant")
    assert last.input_ids == encoded.input_ids
    assert trained_text(last, tokenizer) == expected_runs(template, messages, tokenizer)[-1:]
    assert all(template().encode(messages, tokenizer, train_on_inputs=True).trainable)


@pytest.mark.parametrize("template", TEMPLATES, ids=lambda t: t.name)
def test_generation_prompt_is_the_prefix_before_the_last_reply(template: type,
                                                               tokenizer: Any) -> None:
    messages = [SYSTEM, *MULTI]
    full = template().encode(messages, tokenizer, train_on="last_assistant")
    prompt = template().generation_prompt(messages[:-1], tokenizer)
    assert full.input_ids[: len(prompt)] == prompt
    assert not any(full.trainable[: len(prompt)])
    reply = full.trainable[len(prompt):]
    trained = len(reply) - reply[::-1].index(True)
    assert all(reply[:trained])
    # only the separator after ChatML's <|im_end|> follows the trained reply
    assert tokenizer.decode(full.input_ids[len(prompt) + trained:]).strip() == ""


def text(template: type, messages: list[dict[str, str]], tokenizer: Any) -> str:
    return tokenizer.decode(template().encode(messages, tokenizer).input_ids)


def test_renderings_follow_the_published_formats(tokenizer: Any) -> None:
    bos, eos = tokenizer.bos_token, tokenizer.eos_token
    assert text(ChatMLTemplate, [SYSTEM, *MULTI[:2]], tokenizer) == (
        "<|im_start|>system\nYou are terse.<|im_end|>\n"
        "<|im_start|>user\nWhat is the capital of France?<|im_end|>\n"
        "<|im_start|>assistant\nParis.<|im_end|>\n")
    assert text(AlpacaTemplate, MULTI, tokenizer) == (
        f"{bos}Below is an instruction that describes a task. Write a response that "
        "appropriately completes the request.\n\n"
        "### Instruction:\nWhat is the capital of France?\n\n### Response:\nParis."
        f"{eos}\n\n### Instruction:\nAnd of Japan?\n\n### Response:\nTokyo, since 1868.{eos}")
    assert text(VicunaTemplate, [SYSTEM, *MULTI], tokenizer) == (
        f"{bos}You are terse. USER: What is the capital of France? ASSISTANT: Paris.{eos}"
        f"USER: And of Japan? ASSISTANT: Tokyo, since 1868.{eos}")
    assert text(MistralTemplate, [SYSTEM, *MULTI], tokenizer) == (
        f"{bos}[INST] You are terse.\n\nWhat is the capital of France? [/INST] Paris.{eos}"
        f"[INST] And of Japan? [/INST] Tokyo, since 1868.{eos}")


@pytest.mark.parametrize("name", CONVERSATIONS)
def test_chatml_matches_the_hf_chatml_template_and_its_mask(name: str, tokenizer: Any) -> None:
    """The model's own ChatML chat_template, masked by lorapipe's prefix rendering, gives
    the same ids and the same mask as the structural chatml template."""
    hf = copy.deepcopy(tokenizer)
    hf.chat_template = HF_CHATML
    messages = CONVERSATIONS[name]
    ours = ChatMLTemplate().encode(messages, tokenizer)
    reference = TokenizerTemplate().encode(messages, hf)
    assert ours == reference
    prompt = hf.apply_chat_template(messages[:-1], tokenize=False, add_generation_prompt=True)
    assert tokenizer.decode(ChatMLTemplate().generation_prompt(messages[:-1], tokenizer)) == prompt


def test_chatml_refuses_a_tokenizer_without_its_markers(lorapipe_cache: Path) -> None:
    plain = AutoTokenizer.from_pretrained(resolve_model_path("tiny-llama"))
    with pytest.raises(UserError, match=r"chatml' needs the special token <\|im_start\|>.*"
                                        r"does not add it"):
        ChatMLTemplate().encode(MULTI, plain)


@pytest.mark.parametrize("template", [AlpacaTemplate, VicunaTemplate, MistralTemplate],
                         ids=lambda t: t.name)
def test_instruction_templates_need_alternating_turns(template: type, tokenizer: Any) -> None:
    with pytest.raises(UnrenderableConversation, match="alternating; message 2"):
        template().encode([MULTI[0], MULTI[2], MULTI[1]], tokenizer)
    with pytest.raises(UnrenderableConversation, match="final user turn"):
        template().generation_prompt(MULTI, tokenizer)


def test_all_four_are_registered_by_the_entry_point() -> None:
    registry = get_registry()
    for template in TEMPLATES:
        assert registry.get("chat_template", template.name, "data.template") is template
        assert "lorapipe-templates" in registry.provider("chat_template", template.name)


@pytest.mark.parametrize("name", CONVERSATIONS)
@pytest.mark.parametrize("template", TEMPLATES, ids=lambda t: t.name)
def test_serving_template_renders_what_is_trained(template: type, name: str,
                                                  tokenizer: Any) -> None:
    """merged/ and the GGUF carry this Jinja: it must render the text training saw."""
    messages = CONVERSATIONS[name]
    for prompt, conversation in ((False, messages), (True, messages[:-1])):
        assert (template().served_text(conversation, tokenizer, generation_prompt=prompt)
                == template().text(conversation, tokenizer, generation_prompt=prompt))
