"""Config validation: every broken config is one clear line naming the field, exit 2."""

from __future__ import annotations

import copy
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from lorapipe.cli import main
from lorapipe.config import apply_overrides
from lorapipe.plan import load_plan

VALID: dict[str, Any] = {
    "model": {"name_or_path": "tiny-llama", "quantizer": {"name": "nf4"}},
    "data": {"loader": {"name": "jsonl", "path": "DATA"}},
    "train": {"max_steps": 5},
    "export": {"exporters": [{"name": "gguf", "types": ["q8_0"]}]},
    "output_dir": "OUT",
}


@pytest.fixture
def write_config(tmp_path: Path):  # noqa: ANN201
    data_file = tmp_path / "data.jsonl"
    data_file.write_text('{"messages": [{"role": "user", "content": "hi"}]}\n')

    def write(mutate=None, text: str | None = None) -> Path:  # noqa: ANN001
        path = tmp_path / "config.yaml"
        if text is not None:
            path.write_text(text)
            return path
        config = copy.deepcopy(VALID)
        config["data"]["loader"]["path"] = str(data_file)
        config["output_dir"] = str(tmp_path / "run")
        if mutate:
            mutate(config)
        path.write_text(yaml.safe_dump(config))
        return path

    return write


def _set(path: str, value: Any):  # noqa: ANN202
    def mutate(config: dict) -> None:
        node = config
        keys = path.split(".")
        for key in keys[:-1]:
            node = node[int(key)] if isinstance(node, list) else node.setdefault(key, {})
        node[keys[-1]] = value

    return mutate


BROKEN = [
    ("unknown top-level key", _set("modle", {"x": 1}), "modle", "Did you mean 'model'?"),
    (
        "unknown section key",
        _set("train.learnig_rate", 1e-4),
        "train.learnig_rate",
        "Did you mean 'learning_rate'?",
    ),
    (
        "misspelled loader",
        _set("data.loader.name", "jsnol"),
        "data.loader.name",
        "unknown loader 'jsnol'. Available:",
    ),
    (
        "misspelled exporter",
        _set("export.exporters.0.name", "ggfu"),
        "export.exporters.0.name",
        "unknown exporter 'ggfu'",
    ),
    ("bad type", _set("train.epochs", "three"), "train.epochs", "valid number"),
    ("lr of 5", _set("train.learning_rate", 5), "train.learning_rate", "far too high"),
    ("negative r", _set("adapter.r", -4), "adapter.r", "greater than or equal to 1"),
    ("dropout of 1.5", _set("adapter.dropout", 1.5), "adapter.dropout", "less than 1"),
    (
        "missing data file",
        _set("data.loader.path", "/nonexistent/data.jsonl"),
        "data.loader.path",
        "no file matches",
    ),
    (
        "unknown plugin option",
        _set("model.quantizer.double_qant", True),
        "model.quantizer.double_qant",
        "unknown option for quantizer 'nf4'",
    ),
    (
        "bad plugin option value",
        _set("model.quantizer.quant_type", "nf5"),
        "model.quantizer.quant_type",
        "'nf4' or 'fp4'",
    ),
    (
        "unknown gguf type",
        _set("export.exporters.0.types", ["q9_9"]),
        "export.exporters.0.types.0",
        "'q8_0'",
    ),
    ("missing model section", lambda c: c.pop("model"), "model", "required"),
    ("missing output_dir", lambda c: c.pop("output_dir"), "output_dir", "required"),
    ("bad scheduler", _set("train.lr_scheduler", "cosnie"), "train.lr_scheduler", "'cosine'"),
    (
        "targets twice",
        _set("adapter.target_modules", ["q_proj"])
        if False
        else (
            lambda c: c.setdefault("adapter", {}).update(
                target_modules=["q_proj"], target_detector={"name": "llama"}
            )
        ),
        "adapter",
        "not both",
    ),
    ("bad dtype", _set("model.dtype", "float8"), "model.dtype", "'bf16'"),
    (
        "zero accumulation",
        _set("train.gradient_accumulation_steps", 0),
        "train.gradient_accumulation_steps",
        "greater than or equal to 1",
    ),
    (
        "misspelled plugin option hides the required one",
        lambda c: c["data"]["loader"].update(paht=c["data"]["loader"].pop("path")),
        "data.loader.paht",
        "unknown option for loader 'jsonl'. Did you mean 'path'?",
    ),
    (
        "misspelled section hides the required one",
        lambda c: c.update(modle=c.pop("model")),
        "modle",
        "unknown key. Did you mean 'model'?",
    ),
    (
        "early stopping with eval_steps null",
        lambda config: (_set("train.early_stopping", {"patience": 2})(config),
                        _set("train.eval_steps", None)(config)),
        "train.early_stopping",
        "set train.eval_steps",
    ),
]


@pytest.mark.parametrize(
    ("mutate", "field", "hint"), [case[1:] for case in BROKEN], ids=[case[0] for case in BROKEN]
)
def test_broken_config_is_one_clear_line(write_config, capsys, mutate, field, hint) -> None:  # noqa: ANN001
    code = main(["validate", str(write_config(mutate))])
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert len(err.splitlines()) == 1, err
    assert err.startswith(f"error: {field}:"), err
    assert hint in err
    assert "Traceback" not in err


@pytest.mark.parametrize(
    ("text", "hint"),
    [
        ("model: tiny\ndata: x: y\n", ":2: invalid YAML"),
        ("- just\n- a list\n", "top level must be a mapping"),
    ],
)
def test_unparseable_yaml_names_the_file(write_config, capsys, text, hint) -> None:  # noqa: ANN001
    path = write_config(text=text)
    assert main(["validate", str(path)]) == 2
    err = capsys.readouterr().err
    assert str(path) in err and hint in err


def test_missing_config_file(capsys, tmp_path: Path) -> None:  # noqa: ANN001
    assert main(["validate", str(tmp_path / "nope.yaml")]) == 2
    assert "config file not found" in capsys.readouterr().err


def test_valid_config_resolves_plugin_defaults(write_config) -> None:  # noqa: ANN001
    plan = load_plan(write_config())
    resolved = plan.resolved_dict()
    assert resolved["model"]["quantizer"] == {
        "name": "nf4",
        "quant_type": "nf4",
        "double_quant": True,
        "compute_dtype": "auto",
        "quant_storage": "auto",
    }
    assert resolved["adapter"]["r"] == 16 and resolved["adapter"]["alpha"] == 32
    assert resolved["train"]["learning_rate"] == 2e-4
    assert resolved["train"]["lr_scheduler"] == "cosine"
    assert len(plan.config_hash()) == 16


def test_set_overrides_and_changes_the_hash(write_config) -> None:  # noqa: ANN001
    path = write_config()
    base = load_plan(path)
    changed = load_plan(path, ["train.learning_rate=1e-4", "model.quantizer.quant_type=fp4"])
    assert changed.config.train.learning_rate == 1e-4
    assert changed.quantizer.options.quant_type == "fp4"
    assert changed.config_hash() != base.config_hash()


def test_set_turns_a_component_shorthand_into_a_mapping() -> None:
    data = apply_overrides({"model": {"quantizer": "nf4"}}, ["model.quantizer.double_quant=false"])
    assert data["model"]["quantizer"] == {"name": "nf4", "double_quant": False}


def test_set_without_equals_is_a_user_error(write_config, capsys) -> None:  # noqa: ANN001
    assert main(["validate", str(write_config()), "--set", "train.epochs"]) == 2
    assert "key.path=value" in capsys.readouterr().err


def test_cli_process_exits_2_without_traceback(write_config) -> None:  # noqa: ANN001
    result = subprocess.run(
        [sys.executable, "-m", "lorapipe.cli", "validate", str(write_config(_set("adapter.r", 0)))],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert "adapter.r" in result.stderr


def _key_paths(data: Any, prefix: str = "") -> set[str]:
    if not isinstance(data, dict):
        return set()
    paths = set()
    for key, value in data.items():
        path = f"{prefix}.{key}" if prefix else key
        paths |= {path} | _key_paths(value, path)
    return paths


def test_reference_config_documents_every_option(repo_root: Path, monkeypatch) -> None:  # noqa: ANN001
    """configs/reference.yaml is valid and names every key the resolved config has."""
    monkeypatch.chdir(repo_root)
    path = repo_root / "configs" / "reference.yaml"
    documented = _key_paths(yaml.safe_load(path.read_text()))
    resolved = _key_paths(load_plan(path).resolved_dict())
    assert resolved - documented == set()
