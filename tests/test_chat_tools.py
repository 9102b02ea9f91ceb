"""``lorapipe chat --tools FILE``: the tool definitions reach the prompt through the run's
chat template, and the reply is printed as the model wrote it, special tokens included.

The run is tiny-llama under Qwen 3's chat template, which renders tools. The expected
replies are computed here independently: the tokenizer's own ``apply_chat_template(tools=)``
renders the prompt and transformers (or llama.cpp) decodes greedily.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import llama_cpp
import pytest
import torch
import yaml
from safetensors.torch import load_file, save_file
from transformers import AutoModelForCausalLM, AutoTokenizer

from lorapipe.cli import main
from lorapipe.manifest import write_manifest
from lorapipe.model.source import resolve_model_path
from lorapipe.plugins.exporters.gguf.writer import write_gguf

TEMPLATES = Path(__file__).resolve().parent / "fixtures" / "chat_templates"
TOKENS = 12
QUESTION = "What is the weather in Lyon?"
TOOLS = [  # as a user writes the file: bare or wrapped
    {"name": "get_weather", "description": "Current weather in a city.",
     "parameters": {"type": "object", "required": ["city"],
                    "properties": {"city": {"type": "string"}}}},
    {"type": "function", "function": {
        "name": "get_time", "description": "Local time in a time zone.",
        "parameters": {"type": "object", "properties": {"timezone": {"type": "string"}}}}},
]
WRAPPED = [t if "function" in t else {"type": "function", "function": t} for t in TOOLS]
MARKERS = ("<|start_header_id|>", "<|end_header_id|>")  # special tokens of tiny-llama


def _config(path: Path, model: str | Path, output_dir: Path, **data: Any) -> Path:
    """A config of the run's data (``run.jsonl`` beside it)."""
    path.write_text(yaml.safe_dump({
        "model": {"name_or_path": str(model)},
        "data": {"loader": {"name": "jsonl", "path": str(path.parent / "run.jsonl")}, **data},
        "output_dir": str(output_dir),
    }))
    return path


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A prepared run of tiny-llama under Qwen 3's template; its merged/ is a model that
    writes nothing but special tokens (its head scores only two of them, one positive)."""
    root = tmp_path_factory.mktemp("chat-tools")
    model = shutil.copytree(resolve_model_path("tiny-llama"), root / "qwen3-templated")
    tokenizer_config = json.loads((model / "tokenizer_config.json").read_text())
    tokenizer_config["chat_template"] = (TEMPLATES / "Qwen-Qwen3-0.6B.jinja").read_text()
    (model / "tokenizer_config.json").write_text(json.dumps(tokenizer_config))
    (root / "run.jsonl").write_text("".join(
        json.dumps({"messages": [{"role": "user", "content": f"Say {word}."},
                                 {"role": "assistant", "content": f"{word.title()}!"}]}) + "\n"
        for word in ("hello", "goodbye", "thanks", "please", "sorry", "welcome")))
    config = _config(root / "run.yaml", model, root / "run")
    assert main(["prepare", str(config)]) == 0

    merged = shutil.copytree(model, root / "run" / "merged")
    tokenizer = AutoTokenizer.from_pretrained(model)
    tensors = load_file(merged / "model.safetensors")
    head = torch.zeros_like(tensors["lm_head.weight"])
    first, second = tokenizer.convert_tokens_to_ids(list(MARKERS))
    head[first] = tensors["model.embed_tokens.weight"][0]
    head[second] = -head[first]
    tensors["lm_head.weight"] = head
    save_file(tensors, merged / "model.safetensors", metadata={"format": "pt"})
    write_manifest(merged)  # as the merge stage does

    tools = root / "tools.json"
    tools.write_text(json.dumps(TOOLS))
    return {"root": root, "model": model, "config": config, "tools": tools}


def chat(capsys: pytest.CaptureFixture[str], *args: str | Path) -> str:
    assert main(["chat", *map(str, args), "--prompt", QUESTION,
                 "--max-new-tokens", str(TOKENS)]) == 0, capsys.readouterr().err
    return capsys.readouterr().out.removesuffix("\n")


def greedy(model_dir: Path, tokenizer: Any, tools: list[dict[str, Any]] | None) -> str:
    """The reply as the model writes it, special tokens included, without the token that
    ends it."""
    model = AutoModelForCausalLM.from_pretrained(model_dir).eval()
    ids = tokenizer.apply_chat_template([{"role": "user", "content": QUESTION}], tools=tools,
                                        add_generation_prompt=True, return_tensors="pt",
                                        return_dict=True)["input_ids"]
    with torch.no_grad():
        out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids),
                             do_sample=False, max_new_tokens=TOKENS,
                             pad_token_id=tokenizer.pad_token_id)
    stops = model.generation_config.eos_token_id
    reply = [t for t in out[0, ids.shape[1]:].tolist() if t not in stops]
    return tokenizer.decode(reply, skip_special_tokens=False)


def test_the_tool_definitions_reach_the_prompt(run: dict[str, Path],
                                                capsys: pytest.CaptureFixture[str]) -> None:
    tokenizer = AutoTokenizer.from_pretrained(run["root"] / "run" / "data" / "tokenizer")
    prompt = tokenizer.apply_chat_template([{"role": "user", "content": QUESTION}],
                                           tools=WRAPPED, tokenize=False,
                                           add_generation_prompt=True)
    assert "get_weather" in prompt and "Local time in a time zone." in prompt
    expected = greedy(run["model"], tokenizer, WRAPPED)
    assert expected != greedy(run["model"], tokenizer, None)  # the tools change the reply
    assert chat(capsys, run["config"], "--base", "--tools", run["tools"]) == expected


def test_the_reply_is_printed_as_written_special_tokens_and_all(
        run: dict[str, Path], capsys: pytest.CaptureFixture[str]) -> None:
    tokenizer = AutoTokenizer.from_pretrained(run["root"] / "run" / "data" / "tokenizer")
    expected = greedy(run["root"] / "run" / "merged", tokenizer, WRAPPED)
    assert len(expected) >= TOKENS * min(map(len, MARKERS))  # only markers, no stop
    assert chat(capsys, run["config"], "--tools", run["tools"]) == expected
    assert chat(capsys, run["config"]) == ""  # without --tools, special tokens are not shown


def test_gguf_gets_the_tools_through_llama_cpp(run: dict[str, Path], tmp_path: Path,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    gguf = write_gguf(run["model"], tmp_path / "qwen3.gguf", "f32", progress=False).path
    llm = llama_cpp.Llama(str(gguf), n_ctx=512, verbose=False)

    def reply(tools: list[dict[str, Any]] | None) -> str:
        answer = llm.create_chat_completion([{"role": "user", "content": QUESTION}],
                                            tools=tools, max_tokens=TOKENS, temperature=0)
        return answer["choices"][0]["message"]["content"]

    expected = reply(WRAPPED)
    assert expected.strip() and expected != reply(None)
    assert chat(capsys, run["config"], "--gguf", gguf, "--tools", run["tools"]) == expected

    plain = write_gguf(Path(resolve_model_path("tiny-llama")), tmp_path / "tiny.gguf", "f32",
                       progress=False).path  # tiny-llama's own template renders no tools
    args = [str(run["config"]), "--gguf", str(plain), "--tools", str(run["tools"])]
    assert main(["chat", *args, "--prompt", "hi"]) == 2
    assert ("--tools: the chat template in tiny.gguf leaves tool definitions out of the "
            "prompt") in capsys.readouterr().err


def test_tools_the_template_would_not_show_are_refused(
        run: dict[str, Path], capsys: pytest.CaptureFixture[str]) -> None:
    root = run["root"]
    named = _config(root / "llama3.yaml", run["model"], root / "run", template={"name": "llama3"})
    own = _config(root / "own.yaml", "tiny-llama", root / "unprepared")
    cases = [
        (named, "--tools: chat template 'llama3' (data.template) renders no tool definitions"),
        (own, "--tools: the run's chat template leaves tool definitions out of the prompt"),
    ]
    for config, message in cases:
        assert main(["chat", str(config), "--tools", str(run["tools"]), "--prompt", "hi"]) == 2
        assert message in capsys.readouterr().err


@pytest.mark.parametrize(("text", "message"), [
    (None, "no such file"),
    ("[{", "not JSON (Expecting property name enclosed in double quotes, line 1 column 3)"),
    ('{"name": "get_weather"}', "expected a JSON list of tool definitions"),
    ('[{"description": "no name"}]', "tools.json[1] is not a function definition"),
    ("[]", "the list of tool definitions is empty"),
])
def test_a_bad_tools_file_is_one_clear_line(run: dict[str, Path], tmp_path: Path,
                                            capsys: pytest.CaptureFixture[str], text: str | None,
                                            message: str) -> None:
    path = tmp_path / "tools.json"
    if text is not None:
        path.write_text(text)
    assert main(["chat", str(run["config"]), "--tools", str(path), "--prompt", "hi"]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: --tools {path}: ") and err.count("\n") == 1
    assert message in err
