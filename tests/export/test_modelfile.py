"""The Ollama Modelfile: its Go TEMPLATE, run by Go's own text/template the way Ollama
runs it, must render exactly what the trained chat template renders — checked on every
real template in llama.cpp's collection that lorapipe judges framed."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
from transformers import AutoTokenizer

from lorapipe.model.source import resolve_model_path
from lorapipe.plugins.exporters.gguf.modelfile import (
    TOOLS_LEFT,
    TOOLS_NOTE,
    frames,
    go_template,
    modelfile,
    render,
    stops,
)
from lorapipe.plugins.templates.llama import Llama2Template, Llama3Template

TEMPLATES = Path(__file__).resolve().parents[1] / "fixtures" / "chat_templates"
HARNESS = Path(__file__).resolve().parent / "ollama_render" / "main.go"
SYSTEM = {"role": "system", "content": "You answer in one sentence."}
TURNS = [{"role": "user", "content": "Which city is the capital of France?"},
         {"role": "assistant", "content": "Paris is the capital\nof France."},
         {"role": "user", "content": "And a spider's legs?"}]
CONVERSATIONS = [TURNS[:1], [SYSTEM, *TURNS[:1]], TURNS, [SYSTEM, *TURNS]]


@pytest.fixture(scope="module")
def go_render(tmp_path_factory: pytest.TempPathFactory) -> Any:
    """The harness built once; skipped only outside CI when Go is not installed."""
    if shutil.which("go") is None:
        if os.environ.get("CI"):
            pytest.fail("Go is not installed (.ci/run installs golang-go)")
        pytest.skip("Go is not installed (apt-get install golang-go)")
    out = tmp_path_factory.mktemp("go")
    env = {**os.environ, "GOCACHE": str(out / "cache"), "GOFLAGS": "-mod=mod",
           "GOPATH": str(out / "path")}
    subprocess.run(["go", "build", "-o", str(out / "render"), str(HARNESS)], check=True,
                   env=env, cwd=out)

    def run(template: str, messages: list[dict[str, str]]) -> str:
        done = subprocess.run([str(out / "render")], input=json.dumps(
            {"template": template, "messages": messages}), capture_output=True, text=True,
            check=True)
        return done.stdout

    return run


@pytest.fixture(scope="module")
def tokenizer() -> Any:
    return AutoTokenizer.from_pretrained(resolve_model_path("tiny-llama"))


def with_template(tokenizer: Any, template: str) -> Any:
    tokenizer.chat_template = template
    return tokenizer


def test_llama3_gets_a_template_ollama_renders_as_training_does(
        tokenizer: Any, go_render: Any) -> None:
    tok = with_template(tokenizer, Llama3Template.chat_template)
    text = modelfile("model-q8_0.gguf", tok, num_ctx=2048)
    lines = text.splitlines()
    assert lines[1] == "FROM ./model-q8_0.gguf"
    assert "PARAMETER num_ctx 2048" in lines
    assert 'PARAMETER stop "<|eot_id|>"' in lines
    template = text.split('TEMPLATE """', 1)[1].rsplit('"""', 1)[0]
    for conversation in CONVERSATIONS:
        assert go_render(template, conversation) == render(tok, conversation, True)


def test_every_framed_real_template_renders_the_same_in_ollama(
        tokenizer: Any, go_render: Any) -> None:
    framed, unframed = [], []
    for path in sorted(TEMPLATES.glob("*.jinja")):
        tok = with_template(tokenizer, path.read_text())
        found = frames(tok)
        if found is None:
            unframed.append(path.stem)
            continue
        framed.append(path.stem)
        for conversation in CONVERSATIONS:
            assert go_render(go_template(found), conversation) == \
                render(tok, conversation, True), path.stem
    # the framed ones include the families that are (ChatML, Llama 3 without dates)
    assert len(framed) >= 5, framed
    assert "Qwen-Qwen2.5-7B-Instruct" in unframed  # adds a default system prompt
    assert "meta-llama-Llama-3.1-8B-Instruct" in unframed  # adds the date to the system


def test_a_template_that_is_not_framed_is_left_to_ollama(tokenizer: Any) -> None:
    tok = with_template(tokenizer, Llama2Template.chat_template)
    text = modelfile("model-f16.gguf", tok, num_ctx=None)
    assert "TEMPLATE" not in text.replace("# No TEMPLATE", "")
    assert "Ollama must recognise the GGUF's own" in text
    assert "num_ctx" not in text
    assert stops(tok) == [tok.eos_token]



def test_the_file_says_tools_are_left_to_ollama(tokenizer: Any) -> None:
    """No TEMPLATE lorapipe writes renders tools (it could not be checked to render them
    exactly), so the file says that Ollama will turn tool requests down; without a
    TEMPLATE, tools are up to the template Ollama recognises, and the file says that."""
    assert TOOLS_NOTE.startswith("# Tools: lorapipe leaves them to Ollama.")
    assert TOOLS_LEFT.startswith("# Tools: lorapipe leaves them to Ollama,")
    # framed templates that render tools themselves, as trained, and Llama 3
    framed = [text for text in (path.read_text() for path in sorted(TEMPLATES.glob("*.jinja")))
              if "tools" in text and frames(with_template(tokenizer, text))]
    assert len(framed) >= 3
    for text in [*framed, Llama3Template.chat_template]:
        file = modelfile("model-q8_0.gguf", with_template(tokenizer, text), 2048)
        assert file.endswith('"""\n' + TOOLS_NOTE + "\n") and TOOLS_LEFT not in file
        # Ollama offers tools only to a template that uses .Tools; this one uses no tool field
        assert "Tool" not in file.split('TEMPLATE """', 1)[1].rsplit('"""', 1)[0]
    file = modelfile("model-f16.gguf", with_template(tokenizer, Llama2Template.chat_template),
                     None)
    assert file.endswith("\n" + TOOLS_LEFT + "\n") and TOOLS_NOTE not in file
