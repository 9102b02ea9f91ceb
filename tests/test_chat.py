"""``lorapipe chat`` on a finished quickstart run, judged by transformers and llama.cpp.

The expected replies are computed here independently: the tokenizer's own
``apply_chat_template`` renders the conversation, transformers (or llama.cpp) decodes
greedily, and the chat must say exactly that — streamed through a real terminal.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

import llama_cpp
import pexpect
import pytest
import torch
from quickstart_run import REPO
from transformers import AutoModelForCausalLM, AutoTokenizer

from lorapipe.cli import main
from lorapipe.model.loading import load_base_model
from lorapipe.plan import load_plan

TOKENS = 16
QUESTION = "What is 7 plus 2?"
FOLLOW_UP = "What sound does a cat make?"


def greedy(model: torch.nn.Module, tokenizer, messages: list[dict[str, str]]) -> str:  # noqa: ANN001
    ids = tokenizer.apply_chat_template(messages, add_generation_prompt=True,
                                        return_tensors="pt", return_dict=True)["input_ids"]
    with torch.no_grad():
        out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids),
                             do_sample=False, max_new_tokens=TOKENS,
                             pad_token_id=tokenizer.eos_token_id)
    return tokenizer.decode(out[0, ids.shape[1]:], skip_special_tokens=True)


@pytest.fixture(scope="module")
def merged(finished_run: Path) -> tuple[torch.nn.Module, object]:
    model = AutoModelForCausalLM.from_pretrained(finished_run / "merged", dtype="auto")
    return model.eval(), AutoTokenizer.from_pretrained(finished_run / "data" / "tokenizer")


def user(text: str) -> dict[str, str]:
    return {"role": "user", "content": text}


def chat_once(capsys: pytest.CaptureFixture[str], *args: str) -> str:
    assert main(["chat", *args, "--prompt", QUESTION, "--max-new-tokens", str(TOKENS)]) == 0
    return capsys.readouterr().out.removesuffix("\n")


def test_a_prompt_is_answered_as_the_merged_model_answers(
        finished_run: Path, merged: tuple, tmp_path: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    expected = greedy(*merged, [user(QUESTION)])
    assert expected.strip()
    assert chat_once(capsys, str(finished_run)) == expected
    # the config file names the same run through its output_dir
    config = tmp_path / "config.yaml"
    config.write_text((finished_run / "config.resolved.yaml").read_text().replace(
        "output_dir:", f"output_dir: {finished_run}  #", 1))
    assert chat_once(capsys, str(config)) == expected


def test_base_answers_as_the_base_model_does(
        finished_run: Path, capsys: pytest.CaptureFixture[str]) -> None:
    plan = load_plan(finished_run / "config.resolved.yaml")
    base = load_base_model(plan.config.model, dtype=torch.float32, device="cpu",
                           quantizer=plan.quantizer).eval()
    base.config.use_cache = True
    tokenizer = AutoTokenizer.from_pretrained(finished_run / "data" / "tokenizer")
    expected = greedy(base, tokenizer, [user(QUESTION)])
    answer = chat_once(capsys, str(finished_run), "--base")
    assert answer == expected
    assert answer != chat_once(capsys, str(finished_run))


def test_gguf_answers_as_llama_cpp_does(finished_run: Path,
                                        capsys: pytest.CaptureFixture[str]) -> None:
    gguf = finished_run / "export" / "gguf" / "model-q8_0.gguf"
    tokenizer = AutoTokenizer.from_pretrained(finished_run / "data" / "tokenizer")
    prompt = tokenizer.apply_chat_template([user(QUESTION)], add_generation_prompt=True,
                                           return_dict=True)["input_ids"]
    llm = llama_cpp.Llama(str(gguf), n_ctx=512, verbose=False)
    expected = llm.create_completion(prompt, max_tokens=TOKENS, temperature=0)
    assert expected["choices"][0]["text"].strip()
    answer = chat_once(capsys, str(finished_run), "--gguf", str(gguf))
    assert answer == expected["choices"][0]["text"]


def test_a_damaged_exported_gguf_is_refused_before_llama_cpp_reads_it(
        finished_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The export's manifest is checked: one flipped byte in the GGUF's tensor data (which
    llama.cpp would load and answer with) is named, exit 2."""
    import shutil

    exported = tmp_path / "gguf"
    shutil.copytree(finished_run / "export" / "gguf", exported)
    gguf = exported / "model-q8_0.gguf"
    data = bytearray(gguf.read_bytes())
    data[len(data) * 3 // 4] ^= 0x01
    gguf.write_bytes(bytes(data))
    assert main(["chat", str(finished_run), "--gguf", str(gguf), "--prompt", "hi"]) == 2
    err = capsys.readouterr().err
    assert f"{gguf} does not match its checksum" in err and "lorapipe export" in err


def test_bad_arguments_are_one_clear_line(finished_run: Path, tmp_path: Path,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    cases = [
        ([str(tmp_path)], "is not a run directory"),
        ([str(tmp_path / "missing")], "no such run directory or config file"),
        ([str(finished_run), "--gguf", str(tmp_path / "x.gguf")], "x.gguf: no such file"),
        ([str(finished_run), "--base", "--gguf", "x.gguf"], "--base and --gguf contradict"),
        ([str(finished_run), "--temperature", "-1"], "--temperature at least 0"),
    ]
    for args, message in cases:
        assert main(["chat", *args, "--prompt", "hi"]) == 2
        assert message in capsys.readouterr().err


def _reply(child: pexpect.spawn) -> str:
    child.expect("you> ")
    return re.sub(r"^model> ", "", child.before.replace("\r\n", "\n").strip("\n")).strip("\n")


def test_a_conversation_in_a_terminal(finished_run: Path, merged: tuple) -> None:
    """Streaming, history, /system and /reset through a real pseudo-terminal."""
    child = pexpect.spawn(sys.executable, ["-m", "lorapipe.cli", "chat", str(finished_run),
                                           "--max-new-tokens", str(TOKENS)],
                          cwd=str(REPO), encoding="utf-8", timeout=240, dimensions=(50, 400))
    child.expect("merged/")
    child.expect("you> ")
    child.sendline(QUESTION)
    child.expect_exact(QUESTION)  # the terminal's echo
    first = _reply(child)
    assert first == greedy(*merged, [user(QUESTION)])

    child.sendline(FOLLOW_UP)
    child.expect_exact(FOLLOW_UP)
    second = _reply(child)
    history = [user(QUESTION), {"role": "assistant", "content": first}, user(FOLLOW_UP)]
    assert second == greedy(*merged, history)

    child.sendline("/system You are terse.")
    child.expect_exact("system prompt set: You are terse.; conversation cleared")
    child.expect("you> ")
    child.sendline(FOLLOW_UP)
    child.expect_exact(FOLLOW_UP)
    with_system = _reply(child)
    assert with_system == greedy(*merged, [{"role": "system", "content": "You are terse."},
                                           user(FOLLOW_UP)])

    child.sendline("/system")
    child.expect("you> ")
    child.sendline("/reset")
    child.expect_exact("conversation cleared")
    child.expect("you> ")
    child.sendline(FOLLOW_UP)
    child.expect_exact(FOLLOW_UP)
    assert _reply(child) == greedy(*merged, [user(FOLLOW_UP)])

    child.sendline("/exit")
    child.expect(pexpect.EOF)
    child.close()
    assert child.exitstatus == 0
