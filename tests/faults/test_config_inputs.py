"""Hostile or careless YAML: duplicate keys, alias bombs and huge values are refused
quickly with one line naming the file and line, exit 2."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import yaml

from lorapipe.cli import main
from lorapipe.config import MAX_EXPANDED_VALUES, read_yaml
from lorapipe.errors import ConfigError

HEAD = """model:
  name_or_path: tiny-llama
data:
  loader: {name: jsonl, path: data.jsonl}
"""


def _laughs(levels: int = 9) -> str:
    """The classic 'billion laughs': each anchor lists the previous one nine times."""
    lines = ['l0: &l0 ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]']
    for n in range(1, levels + 1):
        lines.append(f"l{n}: &l{n} [{', '.join([f'*l{n - 1}'] * 9)}]")
    return "\n".join(lines) + "\n"


def _validate(path: Path, capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    code = main(["validate", str(path)])
    return code, capsys.readouterr().err.strip()


def test_duplicate_section_names_both_lines(tmp_path: Path, capsys) -> None:  # noqa: ANN001
    path = tmp_path / "config.yaml"
    path.write_text(HEAD + "train:\n  epochs: 2\noutput_dir: out\ntrain:\n  seed: 3\n")
    code, err = _validate(path, capsys)
    assert code == 2
    assert err == (f"error: {path}:8: key 'train' is defined twice (first at line 5); "
                   "merge the two blocks")


def test_duplicate_key_inside_a_section_and_in_flow_style(tmp_path: Path) -> None:
    path = tmp_path / "config.yaml"
    path.write_text(HEAD + "train:\n  epochs: 2\n  seed: 1\n  epochs: 3\n")
    with pytest.raises(ConfigError, match=r":8: key 'epochs' is defined twice \(first at "
                                          r"line 6\); keep one of them"):
        read_yaml(path)
    path.write_text("train: {seed: 1, seed: 2}\n")
    with pytest.raises(ConfigError, match=r":1: key 'seed' is defined twice"):
        read_yaml(path)


def test_merge_keys_may_still_be_overridden(tmp_path: Path) -> None:
    path = tmp_path / "config.yaml"
    path.write_text("base: &base {epochs: 1, seed: 7}\ntrain:\n  <<: *base\n  epochs: 2\n")
    assert read_yaml(path)["train"] == {"epochs": 2, "seed": 7}


def test_safe_loading_refuses_python_tags(tmp_path: Path) -> None:
    path = tmp_path / "config.yaml"
    path.write_text("output_dir: !!python/object/apply:os.getcwd []\n")
    with pytest.raises(ConfigError, match=r":1: invalid YAML"):
        read_yaml(path)


@pytest.mark.parametrize("field", ["output_dir: *l9", "adapter:\n  modules_to_save: *l9"])
def test_billion_laughs_fails_fast(tmp_path: Path, capsys, field: str) -> None:  # noqa: ANN001
    path = tmp_path / "config.yaml"
    path.write_text(HEAD + _laughs() + field + "\n")
    start = time.perf_counter()
    code, err = _validate(path, capsys)
    assert time.perf_counter() - start < 1.0
    assert code == 2
    assert len(err.splitlines()) == 1 and len(err) < 300, err
    assert f"{path}:" in err and f"more than {MAX_EXPANDED_VALUES:,} values" in err


def test_a_few_aliases_are_fine(tmp_path: Path) -> None:
    path = tmp_path / "config.yaml"
    path.write_text(HEAD + _laughs(levels=3) + "output_dir: out\n")  # 9**4 values: allowed
    assert len(read_yaml(path)["l3"]) == 9


def test_an_alias_inside_its_own_node_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "config.yaml"
    path.write_text(HEAD + "adapter:\n  modules_to_save: &loop [a, *loop]\n")
    with pytest.raises(ConfigError, match=r":6: an alias \(\*name\) refers to a node that "
                                          "contains it"):
        read_yaml(path)


def test_deeply_nested_yaml_is_a_config_error(tmp_path: Path) -> None:
    path = tmp_path / "config.yaml"
    path.write_text("output_dir: " + "[" * 50_000 + "]" * 50_000 + "\n")
    with pytest.raises(ConfigError, match="nested too deeply"):
        read_yaml(path)


def test_a_huge_value_is_not_rendered_in_the_message(tmp_path: Path, capsys) -> None:  # noqa: ANN001
    path = tmp_path / "config.yaml"
    path.write_text(HEAD + f"train:\n  epochs: {'x' * 1_000_000}\noutput_dir: out\n")
    code, err = _validate(path, capsys)
    assert code == 2
    assert err.startswith("error: train.epochs: Input should be a valid number")
    assert "(got 'xxx" in err and "..." in err and len(err) < 200, err


def test_max_length_beyond_the_models_context_is_refused_at_validate(tmp_path: Path,
                                                                      capsys) -> None:  # noqa: ANN001
    """tiny-llama's config.json says 2048 positions: 4096 is refused before any work."""
    data = tmp_path / "d.jsonl"
    data.write_text('{"messages": [{"role": "user", "content": "hi"}]}\n')
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump({"model": {"name_or_path": "tiny-llama"},
                                    "data": {"loader": {"name": "jsonl", "path": str(data)},
                                             "max_length": 4096},
                                    "output_dir": str(tmp_path / "run")}))
    assert main(["validate", str(path)]) == 2
    assert ("data.max_length: 4096 is longer than the model's context of 2048 tokens"
            in capsys.readouterr().err)


@pytest.mark.parametrize(("extra", "field"), [
    ("train:\n  epochs: .inf\n", "train.epochs"),
    ("adapter:\n  alpha: .inf\n", "adapter.alpha"),
    ("train:\n  learning_rate: .nan\n", "train.learning_rate"),
    ("evaluate:\n  evaluators:\n  - {name: perplexity, max_general_increase: .inf}\n",
     "evaluate.evaluators.0.max_general_increase"),
    ("data:\n  loader: {name: jsonl, path: data.jsonl}\n  validation: {fraction: 0.6}\n"
     "  test: {fraction: 0.5}\n", "data.test.fraction"),
    ("data:\n  loader: {name: jsonl, path: data.jsonl}\n  columns: {messagez: turns}\n",
     "data.columns.messagez"),
    ("output_dir: " + "x" * 300 + "\n", "output_dir"),
    ("output_dir: /\n", "output_dir"),
    ("output_dir: /srv\n", "output_dir"),
])
def test_validate_refuses_what_run_would_refuse(extra: str, field: str, tmp_path: Path,
                                                capsys: pytest.CaptureFixture[str],
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    """Values that pass every bound but cannot run, and run-directory rules: one line
    naming the field at ``validate``, exit 2, before any work."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "data.jsonl").write_text("")
    head = HEAD if extra.startswith(("train", "adapter", "evaluate", "output")) else \
        "model:\n  name_or_path: tiny-llama\n"
    path = tmp_path / "config.yaml"
    text = head + extra
    if "output_dir" not in extra:
        text += f"output_dir: {tmp_path / 'run'}\n"
    path.write_text(text)
    code, err = _validate(path, capsys)
    assert code == 2, err
    assert len(err.splitlines()) == 1 and field in err and "Traceback" not in err, err
    assert not (tmp_path / "run").exists()


def test_validate_refuses_a_missing_model_directory(
        tmp_path: Path, capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "data.jsonl").write_text("")
    path = tmp_path / "config.yaml"
    path.write_text(HEAD.replace("tiny-llama", str(tmp_path / "no-such-model"))
                    + f"output_dir: {tmp_path / 'run'}\n")
    code, err = _validate(path, capsys)
    assert code == 2 and err.startswith("error: model.name_or_path: no such directory"), err


@pytest.mark.parametrize(("config_json", "message"), [
    (None, "has no config.json"),
    ("{not json", "config.json is not valid JSON (Expecting property name"),
    ("[1]", "config.json holds a JSON list, not an object"),
    ('{"model_type": "no_such_arch"}', "config.json: model_type 'no_such_arch' is not one "
                                       "transformers"),
])
def test_validate_refuses_a_model_directory_whose_config_cannot_load(
        config_json: str | None, message: str, tmp_path: Path,
        capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    """A model directory is refused in one line naming its config.json, by validate as
    by run, before any work (it was a traceback, or valid until prepare failed)."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "data.jsonl").write_text("")
    model = tmp_path / "model"
    model.mkdir()
    if config_json is not None:
        (model / "config.json").write_text(config_json)
    path = tmp_path / "config.yaml"
    path.write_text(HEAD.replace("tiny-llama", str(model)) + f"output_dir: {tmp_path / 'run'}\n")
    code, err = _validate(path, capsys)
    assert code == 2 and err.startswith("error: model.name_or_path: ") and message in err, err
    assert main(["run", str(path)]) == 2 and message in capsys.readouterr().err
    assert not (tmp_path / "run").exists()
