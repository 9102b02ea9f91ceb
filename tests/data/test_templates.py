"""Assistant-only masks from every built-in chat template, checked by decoding."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from lorapipe.authoring.masking import token_range, trained_text
from lorapipe.components import UnrenderableConversation
from lorapipe.errors import UserError
from lorapipe.plugins.templates.llama import Llama2Template, Llama3Template
from lorapipe.plugins.templates.tokenizer import TokenizerTemplate

TEMPLATES = [TokenizerTemplate, Llama3Template, Llama2Template]
SYSTEM = {"role": "system", "content": "You are a careful assistant."}
SINGLE = [{"role": "user", "content": "What is the capital of France?"},
          {"role": "assistant", "content": "The capital of France is Paris."}]
MULTI = SINGLE + [{"role": "user", "content": "And of Japan?"},
                  {"role": "assistant", "content": "Tokyo, since 1868."},
                  {"role": "user", "content": "Thanks! One more: 7 times 6?"},
                  {"role": "assistant", "content": "7 times 6 is 42."}]
CONVERSATIONS = {"single": SINGLE, "single+system": [SYSTEM, *SINGLE],
                 "multi": MULTI, "multi+system": [SYSTEM, *MULTI]}


def end_of_turn(template: type, tokenizer: Any) -> str:
    return tokenizer.eos_token if template is Llama2Template else "<|eot_id|>"


def replies(messages: list[dict[str, str]]) -> list[str]:
    return [m["content"] for m in messages if m["role"] == "assistant"]


@pytest.mark.parametrize("name", CONVERSATIONS)
@pytest.mark.parametrize("template", TEMPLATES, ids=lambda t: t.name)
def test_trained_tokens_are_exactly_the_replies(template: type, name: str, tokenizer: Any) -> None:
    messages = CONVERSATIONS[name]
    encoded = template().encode(messages, tokenizer)
    eot = end_of_turn(template, tokenizer)
    assert trained_text(encoded, tokenizer) == [r + eot for r in replies(messages)]
    assert encoded.input_ids[0] == tokenizer.bos_token_id
    assert encoded.input_ids[1] != tokenizer.bos_token_id  # BOS not doubled


@pytest.mark.parametrize("template", TEMPLATES, ids=lambda t: t.name)
def test_last_assistant_trains_only_the_final_reply(template: type, tokenizer: Any) -> None:
    messages = [SYSTEM, *MULTI]
    encoded = template().encode(messages, tokenizer, train_on="last_assistant")
    assert trained_text(encoded, tokenizer) == [replies(messages)[-1]
                                                + end_of_turn(template, tokenizer)]
    assert encoded.input_ids == template().encode(messages, tokenizer).input_ids


@pytest.mark.parametrize("template", TEMPLATES, ids=lambda t: t.name)
def test_train_on_inputs_trains_every_token(template: type, tokenizer: Any) -> None:
    encoded = template().encode(MULTI, tokenizer, train_on_inputs=True)
    assert all(encoded.trainable)
    assert encoded.input_ids == template().encode(MULTI, tokenizer).input_ids


def _ids(result: Any) -> list[int]:
    # transformers 5 returns a BatchEncoding from apply_chat_template(tokenize=True)
    return list(result["input_ids"]) if hasattr(result, "keys") else list(result)


@pytest.mark.parametrize("name", CONVERSATIONS)
def test_tokenizer_template_matches_apply_chat_template(name: str, tokenizer: Any) -> None:
    messages = CONVERSATIONS[name]
    expected = _ids(tokenizer.apply_chat_template(messages, tokenize=True))
    assert TokenizerTemplate().encode(messages, tokenizer).input_ids == expected
    # tiny-llama's template is Llama 3's, so the named llama3 template agrees too
    assert Llama3Template().encode(messages, tokenizer).input_ids == expected


@pytest.mark.parametrize("template", [TokenizerTemplate, Llama3Template], ids=lambda t: t.name)
def test_generation_prompt_matches_apply_chat_template(template: type, tokenizer: Any) -> None:
    messages = [SYSTEM, *MULTI[:-1]]
    expected = _ids(tokenizer.apply_chat_template(messages, tokenize=True,
                                                  add_generation_prompt=True))
    assert template().generation_prompt(messages, tokenizer) == expected


def test_llama2_generation_prompt_ends_with_the_instruction(tokenizer: Any) -> None:
    ids = Llama2Template().generation_prompt([SYSTEM, *MULTI[:-1]], tokenizer)
    assert tokenizer.decode(ids).endswith("[INST] Thanks! One more: 7 times 6? [/INST]")


def test_llama2_refuses_a_conversation_it_cannot_express(tokenizer: Any) -> None:
    two_users = [SINGLE[0], SINGLE[0], SINGLE[1]]
    with pytest.raises(UnrenderableConversation, match="alternating"):
        Llama2Template().encode(two_users, tokenizer)


def test_a_template_that_rewrites_earlier_turns_still_trains_exactly_the_replies(
        tokenizer: Any) -> None:
    """Writing the number of messages up front changes every earlier rendering once a
    turn follows; the mask comes from the whole conversation's rendering, so it holds."""
    counted = copy.deepcopy(tokenizer)
    counted.chat_template = (
        "{{ bos_token }}{{ messages | length }}{% for m in messages %}"
        "{{ m['role'] }}:\n{{ m['content'] }}<|eot_id|>{% endfor %}"
        "{% if add_generation_prompt %}assistant:\n{% endif %}"
    )
    encoded = TokenizerTemplate().encode([SYSTEM, *MULTI], counted)
    assert trained_text(encoded, counted) == [r + "<|eot_id|>" for r in replies(MULTI)]


def test_a_template_that_drops_the_reply_is_refused_naming_the_field(tokenizer: Any) -> None:
    silent = copy.deepcopy(tokenizer)
    silent.chat_template = ("{% for m in messages %}{% if m['role'] != 'assistant' %}"
                            "{{ m['content'] }}{% endif %}{% endfor %}")
    with pytest.raises(UserError, match="data.template: the model's own chat template "
                                        "renders assistant message 2 not at all"):
        TokenizerTemplate(field="data.template").encode(SINGLE, silent)


def test_a_reply_rendered_by_its_text_is_unrenderable_not_guessed(tokenizer: Any) -> None:
    """A template that writes something around a reply depending on the reply's text
    (here: a tag only for long replies) gives no stable span: such records are dropped,
    not masked by a guess about where the reply starts."""
    moody = copy.deepcopy(tokenizer)
    moody.chat_template = (
        "{% for m in messages %}{{ m['role'] }}:\n{% if m['content'] | length > 20 %}[long]\n"
        "{% endif %}{{ m['content'] }}<|eot_id|>{% endfor %}")
    short = [SINGLE[0], {"role": "assistant", "content": "Paris."}]
    for messages in (short, SINGLE):
        with pytest.raises(UnrenderableConversation, match="depending on its text"):
            TokenizerTemplate().encode(messages, moody)


def test_named_template_needs_its_special_tokens(tokenizer: Any) -> None:
    other = copy.deepcopy(tokenizer)
    other.bos_token = None
    with pytest.raises(UserError, match="template 'llama3' needs the BOS"):
        Llama3Template().encode(SINGLE, other)


# Templates in the styles models ship, each using what transformers' sandbox provides
# (raise_exception, namespace, tojson, the {% generation %} tag, loop controls).
CHATML = (
    "{% for m in messages %}{{ '<|im_start|>' + m['role'] + '\\n' + m['content'] }}"
    "{% generation %}{{ '<|im_end|>' }}{% endgeneration %}{{ '\\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)
STRICT = (
    "{{ bos_token }}{% set ns = namespace(last='') %}{% for m in messages %}"
    "{% if m['role'] == ns.last %}{{ raise_exception('roles must alternate') }}{% endif %}"
    "{% set ns.last = m['role'] %}{{ m['role'] | tojson }}: {{ m['content'] }}{{ eos_token }}"
    "{% if loop.index > 50 %}{% break %}{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}\"assistant\": {% endif %}"
)
UNICODE = [{"role": "user", "content": "Übersetze: naïve café 😀?"},
           {"role": "assistant", "content": "Naiv, Café — 😀🎉 ✓"}]


def _with_template(tokenizer: Any, chat_template: str | None) -> Any:
    if chat_template is None:
        return tokenizer
    other = copy.deepcopy(tokenizer)
    other.chat_template = chat_template
    return other


@pytest.mark.parametrize("chat_template", [None, CHATML, STRICT], ids=["own", "chatml", "strict"])
@pytest.mark.parametrize("name", [*CONVERSATIONS, "unicode"])
def test_direct_rendering_matches_apply_chat_template(chat_template: str | None, name: str,
                                                      tokenizer: Any) -> None:
    """The template renders with the compiled Jinja template, not apply_chat_template; the
    ids must still be exactly apply_chat_template's, for the full text and the prompts."""
    tok = _with_template(tokenizer, chat_template)
    messages = UNICODE if name == "unicode" else CONVERSATIONS[name]
    expected = _ids(tok.apply_chat_template(messages, tokenize=True))
    assert TokenizerTemplate().encode(messages, tok).input_ids == expected
    prompt = messages[:-1]
    assert TokenizerTemplate().generation_prompt(prompt, tok) == _ids(
        tok.apply_chat_template(prompt, tokenize=True, add_generation_prompt=True))


@pytest.mark.parametrize("chat_template", [None, CHATML, STRICT], ids=["own", "chatml", "strict"])
@pytest.mark.parametrize("messages", [UNICODE, [SYSTEM, *MULTI]], ids=["unicode", "multi"])
def test_token_spans_match_character_overlap(chat_template: str | None,
                                             messages: list[dict[str, str]],
                                             tokenizer: Any) -> None:
    """The mask maps spans through token offsets; it must train exactly the tokens whose
    characters overlap a reply's span, also where one character's bytes are split over
    tokens."""
    tok = _with_template(tokenizer, chat_template)
    full = tok.apply_chat_template(messages, tokenize=False)
    spans = []
    for i, message in enumerate(messages):
        if message["role"] == "assistant":
            start = len(tok.apply_chat_template(messages[:i], tokenize=False,
                                                add_generation_prompt=True))
            end = len(tok.apply_chat_template(messages[: i + 1], tokenize=False).rstrip())
            spans.append((start, end))
    enc = tok(full, add_special_tokens=False, return_offsets_mapping=True)
    expected = [any(s < span_end and e > span_start for span_start, span_end in spans)
                for s, e in enc["offset_mapping"]]
    encoded = TokenizerTemplate().encode(messages, tok)
    assert encoded.input_ids == enc["input_ids"]
    assert encoded.trainable == expected
    assert any(expected)


def test_a_template_error_makes_the_conversation_unrenderable(tokenizer: Any) -> None:
    two_users = [SINGLE[0], SINGLE[0], SINGLE[1]]
    with pytest.raises(UnrenderableConversation, match="roles must alternate"):
        TokenizerTemplate().encode(two_users, _with_template(tokenizer, STRICT))


def test_token_range_is_the_tokens_overlapping_the_span(tokenizer: Any) -> None:
    """token_range starts from the tokens holding a span's first and last characters; it
    must give exactly the tokens whose offsets overlap the span, also where one
    character's bytes are split over several tokens."""
    text = "naïve 😀🎉 café ✓<|eot_id|>日本 👩‍👩‍👧!"
    encoding = tokenizer.backend_tokenizer.encode(text, add_special_tokens=False)
    offsets = encoding.offsets
    assert len(offsets) > len(text) // 2
    for start in range(len(text)):
        for end in range(start + 1, len(text) + 1):
            overlap = [t for t, (s, e) in enumerate(offsets) if s < end and e > start]
            assert token_range(encoding, start, end) == (overlap[0], overlap[-1] + 1)


@pytest.mark.parametrize("name", CONVERSATIONS)
@pytest.mark.parametrize("template", [Llama3Template, Llama2Template], ids=lambda t: t.name)
def test_serving_template_renders_what_is_trained(template: type, name: str,
                                                  tokenizer: Any) -> None:
    """The Jinja a named template writes into merged/ and the GGUF renders exactly the text
    training saw, with and without the generation prompt (llama.cpp and transformers then
    prompt the model in the format it learned)."""
    messages = CONVERSATIONS[name]
    for prompt, conversation in ((False, messages), (True, messages[:-1])):
        assert (template().served_text(conversation, tokenizer, generation_prompt=prompt)
                == template().text(conversation, tokenizer, generation_prompt=prompt))
