"""Untrusted weights in a run directory: a pickled ``adapter_model.bin`` (raw or torch's
zip) where ``adapter_model.safetensors`` belongs, and safetensors files whose header lies
about the body. ``evaluate``, ``merge`` and ``chat`` each refuse them in one line naming
the file (exit 2, no traceback), before peft or transformers opens them.

Every manifest is rewritten to match, so the header check and the refusal of pickles are
the only defences under test; the pickles would write a marker file if ever unpickled, and
the control shows they do.
"""

from __future__ import annotations

import contextlib
import json
import pickle
import shutil
import struct
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml

from lorapipe.cli import main
from lorapipe.manifest import problem, write_manifest
from lorapipe.safetensors_check import header_problem
from lorapipe.train.checkpoint import list_checkpoints, newest_valid

REPO = Path(__file__).resolve().parents[2]
ADAPTER = "adapter/adapter_model.safetensors"
MERGED = "merged/model.safetensors"

Header = dict[str, Any]


def _split(path: Path) -> tuple[Header, bytes]:
    raw = path.read_bytes()
    (length,) = struct.unpack("<Q", raw[:8])
    return json.loads(raw[8:8 + length]), raw[8 + length:]


def _write(path: Path, header: Header, body: bytes) -> None:
    text = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(text)) + text + body)


def _tensors(header: Header) -> list[str]:
    """Tensor names in the order of their bytes."""
    return sorted((k for k in header if k != "__metadata__"),
                  key=lambda k: header[k]["data_offsets"][0])


def _past_the_end(header: Header, body: bytes) -> None:
    last = header[_tensors(header)[-1]]
    last["data_offsets"] = [n + len(body) for n in last["data_offsets"]]


def _overlapping(header: Header, body: bytes) -> None:
    """A tensor pointed at the bytes of another of the same size (none left uncovered
    before it), the way a forger reuses data."""
    names = _tensors(header)
    size = {k: header[k]["data_offsets"][1] - header[k]["data_offsets"][0] for k in names}
    second = next(k for k in names[1:] if size[k] == size[names[0]])
    header[second]["data_offsets"] = list(header[names[0]]["data_offsets"])


def _negative(header: Header, body: bytes) -> None:
    first = header[_tensors(header)[0]]
    first["data_offsets"] = [-4, first["data_offsets"][1] - 4]


def _huge_shape(header: Header, body: bytes) -> None:
    header[_tensors(header)[0]]["shape"] = [2**62, 2**62]


def _unknown_dtype(header: Header, body: bytes) -> None:
    header[_tensors(header)[0]]["dtype"] = "F128"


# what each lie does to (header, body); the message that must name it
LIES: dict[str, tuple[Callable[[Header, bytes], None] | None, str]] = {
    "offsets past the end": (_past_the_end, "ends at byte"),
    "overlapping offsets": (_overlapping, "overlaps the tensor before it"),
    "negative offsets": (_negative, "data_offsets [-4,"),
    "a huge shape": (_huge_shape, "does not fill bytes"),
    "an unknown dtype": (_unknown_dtype, "unknown dtype 'F128'"),
    "a huge header length": (None, "its header claims 9,223,372,036,854,775,808 bytes"),
    "a truncated body": (None, "(truncated?)"),
    "a header that is not JSON": (None, "its header is not valid JSON"),
}


def lie(path: Path, kind: str) -> None:
    """Make ``path`` (a real safetensors file) tell ``LIES[kind]``."""
    change = LIES[kind][0]
    header, body = _split(path)
    if change is not None:
        change(header, body)
        _write(path, header, body)
    elif kind == "a huge header length":
        raw = path.read_bytes()
        path.write_bytes(struct.pack("<Q", 2**63) + raw[8:])
    elif kind == "a truncated body":
        path.write_bytes(path.read_bytes()[:-100])
    else:
        text = json.dumps(header).encode()
        path.write_bytes(struct.pack("<Q", len(text)) + b"[" * len(text) + body)


class _Payload:
    """Unpickled, it writes ``marker``: what any pickle in a run directory may do."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, tuple[str]]:
        return exec, (f"open({str(self.marker)!r}, 'w').write('unpickled')",)


def plant_pickle(directory: Path, name: str, marker: Path, kind: str) -> Path:
    """``directory/name`` as a pickle (``raw``, or ``zip`` as torch.save writes it) whose
    loading writes ``marker``; the safetensors it replaces removed."""
    for old in directory.glob("*.safetensors"):
        old.unlink()
    path = directory / name
    payload = {"base_model.model.lm_head.weight": _Payload(marker)}
    if kind == "raw":
        path.write_bytes(pickle.dumps(payload, protocol=2))
    else:
        torch.save(payload, path)
    return path


@pytest.fixture
def run_copy(finished_run: Path, tmp_path: Path) -> Path:
    """What evaluate, merge and chat read of the finished run (no checkpoints, exports)."""
    run = tmp_path / "run"
    shutil.copytree(finished_run, run, ignore=shutil.ignore_patterns("checkpoints", "export"))
    return run


def _config(run: Path) -> Path:
    """The run's resolved config, pointing at the copy (data paths made absolute)."""
    config = yaml.safe_load((run / "config.resolved.yaml").read_text())
    config["output_dir"] = str(run)
    loader = config["data"]["loader"]
    loader["path"] = [str(REPO / p) for p in loader["path"]]
    path = run.parent / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def _command(command: str, run: Path) -> list[str]:
    if command == "chat":
        return ["chat", str(run), "--prompt", "hi"]
    return [command, str(_config(run))]


def _refused(code: int, out: str, err: str, path: Path, why: str) -> str:
    """Exit 2 and one line naming ``path`` and ``why``; returns the line."""
    assert code == 2, err[-3000:]
    assert "Traceback" not in out + err
    errors = [line for line in err.splitlines() if line.startswith(("error", "warning"))]
    assert len(errors) == 1, err[-3000:]
    assert errors[0].startswith(f"error: {path}:"), errors[0]
    assert why in errors[0] and "lorapipe reads only safetensors" in errors[0], errors[0]
    assert errors[0].endswith("again"), errors[0]  # says what to do
    return errors[0]


def _only_adapter(run: Path) -> None:
    """Without merged/, chat talks to the base model + adapter/."""
    shutil.rmtree(run / "merged")


@pytest.mark.parametrize("kind", LIES)
@pytest.mark.parametrize("command", ["evaluate", "merge", "chat"])
def test_an_adapter_whose_header_lies_is_refused(command: str, kind: str, run_copy: Path,
                                                 capsys: pytest.CaptureFixture) -> None:
    if command == "chat":
        _only_adapter(run_copy)
    path = run_copy / ADAPTER
    lie(path, kind)
    write_manifest(path.parent)
    assert problem(path.parent) is None  # only the header check can tell
    code = main(_command(command, run_copy))
    captured = capsys.readouterr()
    line = _refused(code, captured.out, captured.err, path, LIES[kind][1])
    assert "this file is not a safetensors adapter" in line
    assert "lorapipe train CONFIG" in line


@pytest.mark.parametrize("pickled", ["raw", "zip"])
@pytest.mark.parametrize("command", ["evaluate", "merge", "chat"])
def test_a_pickled_adapter_is_refused_by_name_and_never_unpickled(
        command: str, pickled: str, run_copy: Path, tmp_path: Path,
        capsys: pytest.CaptureFixture) -> None:
    if command == "chat":
        _only_adapter(run_copy)
    marker = tmp_path / "marker"
    path = plant_pickle(run_copy / "adapter", "adapter_model.bin", marker, pickled)
    write_manifest(path.parent)
    code = main(_command(command, run_copy))
    captured = capsys.readouterr()
    _refused(code, captured.out, captured.err, path, "a pickle file is never loaded")
    assert not marker.exists()


@pytest.mark.parametrize("case", ["a truncated body", "overlapping offsets", "raw", "zip"])
@pytest.mark.parametrize("command", ["chat", "export"])
def test_merged_weights_that_are_not_sound_safetensors_are_refused(
        command: str, case: str, run_copy: Path, tmp_path: Path,
        capsys: pytest.CaptureFixture) -> None:
    marker = tmp_path / "marker"
    if case in LIES:
        path, why = run_copy / MERGED, LIES[case][1]
        lie(path, case)
    else:
        path = plant_pickle(run_copy / "merged", "pytorch_model.bin", marker, case)
        why = "a pickle file is never loaded"
    write_manifest(run_copy / "merged")
    code = main(_command(command, run_copy))
    captured = capsys.readouterr()
    line = _refused(code, captured.out, captured.err, path, why)
    assert "lorapipe merge CONFIG" in line
    assert not marker.exists()


def test_a_checkpoint_whose_adapter_lies_is_passed_over(finished_run: Path,
                                                       tmp_path: Path) -> None:
    """--resume takes the newest checkpoint that verifies; a forged adapter header (its
    manifest re-hashed) makes that one unusable, naming the file."""
    root = tmp_path / "checkpoints"
    shutil.copytree(finished_run / "checkpoints", root)
    *_, previous, newest = [path for _, path in list_checkpoints(root)]
    path = newest / ADAPTER
    lie(path, "overlapping offsets")
    write_manifest(newest)
    chosen, problems = newest_valid(root)
    assert chosen == previous
    assert len(problems) == 1 and f"{path}: this file is not a safetensors adapter" in problems[0]


def test_debug_keeps_the_traceback(run_copy: Path, capsys: pytest.CaptureFixture) -> None:
    lie(run_copy / ADAPTER, "a truncated body")
    write_manifest(run_copy / "adapter")
    assert main(["--debug", *_command("merge", run_copy)]) == 2
    err = capsys.readouterr().err
    assert "Traceback" in err and "(truncated?)" in err.splitlines()[-1]


def test_the_controls(finished_run: Path, tmp_path: Path) -> None:
    """What a real run writes passes the check, each lie is caught as that lie, and the
    planted pickles do run their code when unpickled, so the tests above can fail."""
    for path in [finished_run / ADAPTER, *sorted((finished_run / "merged").glob("*.safetensors"))]:
        assert header_problem(path) is None, path
    for kind, (_, why) in LIES.items():
        copy = tmp_path / f"{kind}.safetensors"
        shutil.copy(finished_run / ADAPTER, copy)
        lie(copy, kind)
        assert why in (header_problem(copy) or ""), (kind, header_problem(copy))
    for pickled in ("raw", "zip"):
        directory, marker = tmp_path / pickled, tmp_path / f"{pickled}.marker"
        directory.mkdir()
        path = plant_pickle(directory, "adapter_model.bin", marker, pickled)
        assert zipfile.is_zipfile(path) == (pickled == "zip")
        assert "pickle" in (header_problem(path) or "")
        # what must never happen in lorapipe; a raw pickle runs, then fails torch's magic
        with contextlib.suppress(RuntimeError):
            torch.load(path, weights_only=False)
        assert marker.read_text() == "unpickled"
