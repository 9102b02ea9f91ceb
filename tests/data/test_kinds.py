"""Raw documents, prompt/completion pairs and reasoning turns become the samples they
should: blocks that train every token of a document once, completions masked as TRL's
SFT trainer masks them, reasoning trained with the turn that wrote it."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from datasets import Dataset, load_from_disk
from prepare_helpers import read_report, write_jsonl

from lorapipe.authoring.masking import trained_text
from lorapipe.config import DataConfig
from lorapipe.data.documents import document_blocks, encode_completion, fit_completion
from lorapipe.data.messages import ROLES, conversation
from lorapipe.data.samples import encode_records
from lorapipe.data.schemas import Record, RecordError
from lorapipe.plugins.templates.tokenizer import TokenizerTemplate

AGENT = Path(__file__).resolve().parents[2] / "configs" / "templates" / "tiny-llama-agent.jinja"


@pytest.mark.parametrize(("length", "overlap"), [(10, 0), (37, 0), (37, 5), (64, 7)])
def test_blocks_train_every_token_of_a_document_once(length: int, overlap: int) -> None:
    ids = list(range(100, 100 + length))
    blocks = document_blocks(ids, 16, overlap)
    assert all(len(b.input_ids) <= 16 for b in blocks)
    trained = [t for b in blocks for t, on in zip(b.input_ids, b.trainable, strict=True) if on]
    assert trained == ids
    for before, block in zip(blocks, blocks[1:], strict=False):  # context = previous tail
        context = block.input_ids[:block.trainable.index(True)]
        assert len(context) == overlap and before.input_ids[len(before.input_ids) - overlap:] \
            == context


def test_documents_are_prepared_with_bos_eos_in_blocks(tmp_path: Path, prepare: Any,
                                                       tokenizer: Any) -> None:
    words = " ".join(f"word{n}" for n in range(400))
    docs = [{"text": words}, {"text": "A short note."}, {"text": "Another short note."}]
    summary, out = prepare(write_jsonl(tmp_path / "docs.jsonl", docs), format="text",
                           max_length=64, block_overlap=8, validation={"count": 1})
    report = read_report(out)
    rows = [r for split in ("train", "validation")
            for r in load_from_disk(str(out / "data" / split))]
    assert {r["kind"] for r in rows} == {"text"}
    assert report["added_samples"]["block"] == len(rows) - 3 > 0
    long_doc = tokenizer(words)["input_ids"] + [tokenizer.eos_token_id]
    assert long_doc[0] == tokenizer.bos_token_id  # the tokenizer's own BOS
    blocks = [r for r in rows if r["messages"] == json.dumps({"text": words})]
    trained = [t for r in blocks for t, label in zip(r["input_ids"], r["labels"],
                                                      strict=True) if label != -100]
    assert sorted(trained) == sorted(long_doc)  # the split keeps a document's blocks together
    short = next(r for r in rows if "A short note." in r["messages"])
    assert short["labels"] == short["input_ids"] == tokenizer("A short note.")["input_ids"] + [
        tokenizer.eos_token_id]


def test_completion_masks_match_trl(tmp_path: Path, tokenizer: Any) -> None:
    """TRL's SFT trainer is the reference: same ids, same labels. Where tokenizing prompt
    and completion together merges a token across the boundary ("is " + "blue"), TRL
    trains on the merged ids; lorapipe keeps the prompt's own tokens, as inference sees
    them, and appends the completion's."""
    trl = pytest.importorskip("trl")
    from transformers import AutoModelForCausalLM

    from lorapipe.model.source import resolve_model_path

    pairs = [("Q: 2 + 2 =", " 4"), ("Translate to French: cat ->", " chat"),
             ("", "A completion without a prompt."), ("The sky is ", "blue.")]
    model = AutoModelForCausalLM.from_pretrained(resolve_model_path("tiny-llama"))
    trainer = trl.SFTTrainer(
        model=model, processing_class=tokenizer,
        train_dataset=Dataset.from_list([{"prompt": p, "completion": c} for p, c in pairs]),
        args=trl.SFTConfig(output_dir=str(tmp_path), report_to=[], max_length=None,
                           use_cpu=True, bf16=False))
    for (prompt, completion), row in zip(pairs, trainer.train_dataset, strict=True):
        ours = encode_completion(prompt, completion, tokenizer)
        labels = [t if on else -100 for t, on in zip(ours.input_ids, ours.trainable,
                                                      strict=True)]
        prompt_ids = tokenizer(prompt)["input_ids"]
        if row["input_ids"][:len(prompt_ids)] == prompt_ids:
            assert (ours.input_ids, labels) == (row["input_ids"], row["labels"])
        else:
            assert ours.input_ids[:len(prompt_ids)] == prompt_ids
            assert tokenizer.decode(ours.input_ids) == tokenizer.decode(row["input_ids"])


def test_truncate_prompt_cuts_a_completions_prompt_after_its_bos(tokenizer: Any) -> None:
    """keep_end on raw text: the BOS, the prompt's last tokens and the whole completion
    stay; a completion longer than max_length alone is refused."""
    prompt = " ".join(f"word{n}" for n in range(30)) + " The sky is"
    encoded = encode_completion(prompt, " blue.", tokenizer)
    limit = len(encoded.input_ids) - 12
    cut, truncated = fit_completion(encoded, limit, "truncate_prompt", tokenizer.bos_token_id)
    assert truncated and len(cut.input_ids) == limit
    assert cut.input_ids[0] == tokenizer.bos_token_id
    assert cut.input_ids[1:] == encoded.input_ids[13:] and cut.trainable[1:] == \
        encoded.trainable[13:]
    assert tokenizer.decode(cut.input_ids).endswith(f"The sky is blue.{tokenizer.eos_token}")
    with pytest.raises(RecordError, match="completion alone"):
        fit_completion(encoded, sum(encoded.trainable), "truncate_prompt",
                       tokenizer.bos_token_id)


def _data(**options: Any) -> DataConfig:
    return DataConfig(loader={"name": "jsonl", "path": "unused"}, **options)


REASONING = conversation([
    {"role": "user", "content": "What is 2 plus 2?"},
    {"role": "assistant", "content": "4.", "reasoning_content": "2 + 2 = 4."},
    {"role": "user", "content": "Times 3?"},
    {"role": "assistant", "content": "12.", "reasoning_content": "4 times 3 = 12."},
], "messages", "role", "content", ROLES)


def _trained(mode: str, train_reasoning: bool, tokenizer: Any) -> list[tuple[str, list[str]]]:
    template = TokenizerTemplate(TokenizerTemplate.Options(chat_template=AGENT))
    [samples] = encode_records([Record("chat", tuple(REASONING))], template, tokenizer,
                               _data(reasoning_turns=mode, train_reasoning=train_reasoning))
    return [(s.origin, trained_text(s.encoded, tokenizer)) for s in samples]


def test_reasoning_an_earlier_turn_loses_is_trained_on_its_own(tokenizer: Any) -> None:
    """The template shows reasoning after the last user message only: expand trains the
    first turn as its own sample, with its reasoning; the whole conversation then trains
    only the last turn."""
    assert _trained("expand", True, tokenizer) == [
        ("record", ["<think>\n4 times 3 = 12.\n</think>\n\n12.<|eot_id|>"]),
        ("reasoning_turn", ["<think>\n2 + 2 = 4.\n</think>\n\n4.<|eot_id|>"])]
    assert _trained("last", True, tokenizer) == [
        ("record", ["4.<|eot_id|>", "<think>\n4 times 3 = 12.\n</think>\n\n12.<|eot_id|>"])]


def test_train_reasoning_false_keeps_the_reasoning_as_context(tokenizer: Any) -> None:
    assert _trained("expand", False, tokenizer) == [
        ("record", ["12.<|eot_id|>"]), ("reasoning_turn", ["4.<|eot_id|>"])]


def test_a_named_template_refuses_tool_records_with_the_reason(tokenizer: Any) -> None:
    from lorapipe.plugins.templates.llama import Llama3Template

    tools = [{"type": "function", "function": {"name": "f", "parameters": {}}}]
    record = Record("chat", tuple(REASONING[:2]), tools)
    [outcome] = encode_records([record], Llama3Template(), tokenizer, _data())
    assert outcome.reason == "template_cannot_render"
    assert "'llama3' does not render reasoning_content or tool calls" in outcome.detail
