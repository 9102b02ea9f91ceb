"""``lorapipe inspect`` on tool-calling chats, reasoning, documents and completion pairs:
each sample's record is shown readably above its tokens, its trained parts marked ✓ (and
in the trained colour) as the data section trains them."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import yaml
from rich.console import Console

from lorapipe.artifacts import RunPaths
from lorapipe.cli import main
from lorapipe.data.inspect import show_samples
from lorapipe.model.source import resolve_model_path

TEMPLATES = Path(__file__).resolve().parents[1] / "fixtures" / "chat_templates"
BOLD_GREEN, DIM = "\x1b[1;32m", "\x1b[2m"
TOOLS = [
    {"type": "function", "function": {
        "name": "get_weather", "description": "Current weather in a city.",
        "parameters": {"type": "object", "required": ["city"],
                       "properties": {"city": {"type": "string"}}}}},
    {"name": "get_time", "description": "Local time in a time zone.",  # bare, as files have it
     "parameters": {"type": "object", "properties": {"timezone": {"type": "string"}}}},
]
TOOL_CHAT = {"tools": TOOLS, "messages": [
    {"role": "user", "content": "What is the weather in Lyon?"},
    {"role": "assistant", "content": "", "tool_calls": [
        {"id": "call00001", "type": "function",
         "function": {"name": "get_weather", "arguments": {"city": "Lyon"}}}]},
    {"role": "tool", "tool_call_id": "call00001", "content": '{"temperature_c": 18}'},
    {"role": "assistant", "reasoning_content": "The tool says 18 degrees.",
     "content": "It is 18 degrees\nin Lyon."},
]}
# Qwen 3 renders only the last turn's reasoning: the first turn is trained as its own sample
TWO_THOUGHTS = {"messages": [
    {"role": "user", "content": "Pick a number."},
    {"role": "assistant", "reasoning_content": "First thought.", "content": "Seven."},
    {"role": "user", "content": "Another one?"},
    {"role": "assistant", "reasoning_content": "Second thought.", "content": "Three."},
]}
DOCUMENT = {"text": "Cats sleep for most of the day and hunt at dusk."}
PAIR = {"prompt": "Translate to French: cat", "completion": " chat"}


@pytest.fixture(scope="module")
def prepared(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A run prepared with tiny-llama under Qwen 3's chat template, which renders tools
    and reasoning."""
    root = tmp_path_factory.mktemp("inspect-tools")
    model = shutil.copytree(resolve_model_path("tiny-llama"), root / "qwen3-templated")
    tokenizer_config = json.loads((model / "tokenizer_config.json").read_text())
    tokenizer_config["chat_template"] = (TEMPLATES / "Qwen-Qwen3-0.6B.jinja").read_text()
    (model / "tokenizer_config.json").write_text(json.dumps(tokenizer_config))
    fillers = [{"messages": [{"role": "user", "content": f"Say {word}."},
                             {"role": "assistant", "content": f"{word.title()}!"}]}
               for word in ("hello", "goodbye", "thanks", "please", "sorry", "welcome")]
    data = root / "train.jsonl"
    data.write_text("".join(json.dumps(r) + "\n"
                            for r in [TOOL_CHAT, TWO_THOUGHTS, DOCUMENT, PAIR, *fillers]))
    config = root / "run.yaml"
    config.write_text(yaml.safe_dump({
        "model": {"name_or_path": str(model)},
        "data": {"loader": {"name": "jsonl", "path": str(data)}},
        "output_dir": str(root / "run"),
    }))
    assert main(["prepare", str(config)]) == 0
    return config, root / "run"


def everything(config: Path, capsys: pytest.CaptureFixture[str]) -> str:
    """Every sample of both splits, as ``lorapipe inspect`` prints them (no colours)."""
    shown = []
    for split in ("train", "validation"):
        assert main(["inspect", str(config), "--split", split, "--count", "100"]) == 0
        shown.append(capsys.readouterr().out)
    return "\n".join(shown)


def test_tool_turns_are_shown_with_their_calls_results_and_definitions(
        prepared: tuple[Path, Path], capsys: pytest.CaptureFixture[str]) -> None:
    config, _ = prepared
    lines = everything(config, capsys).splitlines()
    start = lines.index("chat, 2 tool definitions: get_weather(city), get_time(timezone)")
    assert lines[start + 1:start + 7] == [
        "    user        What is the weather in Lyon?",
        '  ✓ assistant   call get_weather {"city": "Lyon"} (id call00001)',
        '    tool        get_weather (id call00001) → {"temperature_c": 18}',
        "  ✓ assistant   reasoning: The tool says 18 degrees.",
        "  ✓             It is 18 degrees",
        "                in Lyon.",  # a further line of the reply, under it
    ]


def test_reasoning_the_template_leaves_out_is_said_to_be_left_out(
        prepared: tuple[Path, Path], capsys: pytest.CaptureFixture[str]) -> None:
    config, _ = prepared
    shown = everything(config, capsys)
    # the whole conversation: the first turn is context, its reasoning not rendered ...
    assert "\n".join([
        "    user        Pick a number.",
        "    assistant   reasoning (the chat template leaves it out of this sample): "
        "First thought.",
        "                Seven.",
        "    user        Another one?",
        "  ✓ assistant   reasoning: Second thought.",
        "  ✓             Three.",
    ]) in shown
    # ... and trained as the last turn of its own sample, reasoning and all
    assert "\n".join([
        "    user        Pick a number.",
        "  ✓ assistant   reasoning: First thought.",
        "  ✓             Seven.",
        "",
    ]) in shown


def test_documents_and_completion_pairs_are_shown_as_what_they_are(
        prepared: tuple[Path, Path], capsys: pytest.CaptureFixture[str]) -> None:
    config, _ = prepared
    shown = everything(config, capsys)
    assert f"document of {len(DOCUMENT['text'])} characters, raw text without a chat " \
        "template" in shown
    assert "\n".join(["prompt/completion pair, no chat template",
                      "    prompt      Translate to French: cat",
                      "  ✓ completion   chat"]) in shown


def test_the_record_is_coloured_as_its_tokens_are(prepared: tuple[Path, Path]) -> None:
    _, run = prepared
    console = Console(record=True, width=10_000, force_terminal=True, color_system="standard",
                      highlight=False)
    shown = []
    for split in ("train", "validation"):
        show_samples(RunPaths(run), console, split=split, count=100)
        shown.append(console.export_text(styles=True))
    text = "\n".join(shown)
    assert f"{BOLD_GREEN}It is 18 degrees" in text
    assert f'{BOLD_GREEN}call get_weather {{"city": "Lyon"}}' in text
    assert f"{DIM}What is the weather in Lyon?" in text
    assert f'{DIM}get_weather (id call00001) → {{"temperature_c": 18}}' in text
