"""`lorapipe run` end to end on the quickstart: every artifact, kill -9 and --resume."""

from __future__ import annotations

import json
import os
import shutil
import signal
import time
from pathlib import Path

import pytest
from quickstart_run import run_quickstart as _run

from lorapipe.manifest import problem


def test_every_artifact_exists(finished_run: Path) -> None:
    root = finished_run
    for relative in [
        "config.resolved.yaml",
        "run.json",
        "model_report.json",
        "metrics.jsonl",
        "data/train/dataset_info.json",
        "data/validation/dataset_info.json",
        "data/test/dataset_info.json",
        "data/tokenizer/tokenizer.json",
        "data/report.json",
        "adapter/adapter_config.json",
        "adapter/adapter_model.safetensors",
        "eval/report.json",
        "eval/samples.jsonl",
        "merged/config.json",
        "merged/model.safetensors",
        "merged/tokenizer.json",
        "export/gguf/model-q8_0.gguf",
        "report.html",
    ]:
        assert (root / relative).is_file(), relative
    assert any((root / "checkpoints").glob("step-*"))
    record = json.loads((root / "run.json").read_text())
    assert [record["stages"][s]["status"] for s in record["stages"]] == ["done"] * 5
    assert record["versions"]["lorapipe"] and len(record["config_hash"]) == 16
    report = json.loads((root / "eval/report.json").read_text())["perplexity"]
    assert report["finetuned"]["response"] < report["base"]["response"]
    assert report["split"] == "test"  # the quickstart's held-out test split
    low, high = report["ci95"]["change"]["response"]
    assert low <= report["change"]["response"] <= high < 0
    # Ollama's recipe beside the GGUF: the trained context and end of turn, and a
    # TEMPLATE (tiny-llama's template is framed like Llama 3's; test_modelfile.py runs it)
    recipe = (root / "export/gguf/model-q8_0.Modelfile").read_text().splitlines()
    assert recipe[1:4] == ["FROM ./model-q8_0.gguf", "PARAMETER num_ctx 256",
                           'PARAMETER stop "<|eot_id|>"']
    assert recipe[4].startswith('TEMPLATE """')


def test_model_cards_read_as_the_hub_reads_them(finished_run: Path) -> None:
    """adapter/README.md and merged/README.md, parsed by huggingface_hub: the front matter
    the hub indexes, the settings, and (merged) the evaluation table of the report."""
    from huggingface_hub import ModelCard

    adapter = ModelCard.load(finished_run / "adapter" / "README.md")
    merged = ModelCard.load(finished_run / "merged" / "README.md")
    for card, library in ((adapter, "peft"), (merged, "transformers")):
        data = card.data.to_dict()
        assert data["base_model"] == "tiny-llama" and data["library_name"] == library
        assert data["pipeline_tag"] == "text-generation"
        assert {"lorapipe", "qlora"} <= set(data["tags"])  # the quickstart trains on nf4
        assert data["datasets"] == ["quickstart.jsonl"]
        assert "| LoRA rank / alpha | 16 / 32.0 |" in card.text
        assert "| optimizer steps |" in card.text and "| best validation loss |" in card.text
    report = json.loads((finished_run / "eval/report.json").read_text())["perplexity"]
    row = next(line for line in merged.text.splitlines()
               if line.startswith("| perplexity | test | response |"))
    assert f"{report['base']['response']:.4g}" in row
    assert f"{report['finetuned']['response']:.4g}" in row
    assert "AutoModelForCausalLM.from_pretrained" in merged.text
    assert "AutoPeftModelForCausalLM.from_pretrained" in adapter.text
    # the card is part of what adapter/'s manifest covers
    assert "README.md" in json.loads((finished_run / "adapter/manifest.json").read_text())


def test_llama_cpp_loads_the_exported_file(finished_run: Path) -> None:
    import llama_cpp  # installed by .ci/run: this check must not skip quietly

    llm = llama_cpp.Llama(str(finished_run / "export/gguf/model-q8_0.gguf"), verbose=False)
    try:
        assert llm.n_vocab() == 2048
        assert llm.tokenize(b"The capital of France", add_bos=False)
    finally:
        llm.close()


def test_finished_run_is_not_overwritten(finished_run: Path) -> None:
    result = _run(finished_run)
    assert result.returncode == 2
    assert "--resume" in result.stderr and "--overwrite" in result.stderr


def test_resume_with_a_changed_config_is_refused(finished_run: Path) -> None:
    result = _run(finished_run, "--resume", "--set", "train.learning_rate=1e-4")
    assert result.returncode == 2
    assert "config differs" in result.stderr


def test_kill_9_during_training_then_resume_gives_the_same_adapter(
    finished_run: Path, tmp_path: Path
) -> None:
    """The quickstart's own setup (nf4, evaluation during training), killed after an
    evaluation: the resumed process must train on the same 4-bit weights as the one that
    was killed (bitsandbytes repacks them for its CPU kernel at the first inference
    forward unless told not to)."""
    output_dir = tmp_path / "killed"
    process = _run(output_dir, wait=False)
    deadline = time.monotonic() + 300
    while not (output_dir / "checkpoints" / "step-12" / "manifest.json").is_file():
        assert process.poll() is None, "run ended before it could be killed"
        assert time.monotonic() < deadline, "no checkpoint appeared"
        time.sleep(0.2)
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    record = json.loads((output_dir / "run.json").read_text())
    assert record["stages"]["train"]["status"] == "running"

    resumed = _run(output_dir, "--resume")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    adapter = "adapter/adapter_model.safetensors"
    assert (output_dir / adapter).read_bytes() == (finished_run / adapter).read_bytes()
    assert (output_dir / "export/gguf/model-q8_0.gguf").is_file()
    stages = json.loads((output_dir / "run.json").read_text())["stages"]
    assert all(stage["status"] == "done" for stage in stages.values())


def test_resume_runs_again_what_was_damaged_after_it_finished(finished_run: Path,
                                                             tmp_path: Path) -> None:
    """A truncated GGUF and a flipped adapter byte in a finished run: --resume notices both
    (manifests), runs train (from its last checkpoint) and everything after it again, and
    ends with files identical to the undamaged run's."""
    output_dir = tmp_path / "damaged"
    shutil.copytree(finished_run, output_dir)
    gguf = output_dir / "export" / "gguf" / "model-q8_0.gguf"
    gguf.write_bytes(gguf.read_bytes()[: gguf.stat().st_size // 2])
    weights = output_dir / "adapter" / "adapter_model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-3] ^= 0x10
    weights.write_bytes(bytes(data))
    # output_dir is part of the config, so the copy's hash differs
    resumed = _run(output_dir, "--resume", "--allow-config-change")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "train: running again, its output is damaged" in resumed.stderr
    assert "adapter_model.safetensors does not match its checksum" in resumed.stderr
    name = "adapter/adapter_model.safetensors"
    assert (output_dir / name).read_bytes() == (finished_run / name).read_bytes()
    # written again in full (its provenance holds the config hash, which the copy changed)
    assert gguf.stat().st_size == (finished_run / "export/gguf/model-q8_0.gguf").stat().st_size
    assert problem(gguf.parent) is None


@pytest.mark.parametrize("stage", ["evaluate", "merge", "export"])
def test_kill_9_in_a_later_stage_then_resume_ends_like_the_uninterrupted_run(
        finished_run: Path, tmp_path: Path, stage: str) -> None:
    """kill -9 a third of the way into evaluate, merge or export (of the time the stage
    took in the uninterrupted run), then --resume: the run finishes, with the evaluation,
    merged model and GGUF of the run that was never killed, and no half-written file."""
    output_dir = tmp_path / "killed"
    shutil.copytree(finished_run, output_dir)
    run_json = output_dir / "run.json"
    record = json.loads(run_json.read_text())
    record["stages"][stage]["status"] = "running"  # what a kill during it leaves
    previous_start = record["stages"][stage]["started_at"]
    delay = record["stages"][stage]["seconds"] / 3
    # A stage of a second or so can finish sooner than it did before (warm caches): then
    # the kill came too late to test anything, and it is tried again earlier.
    for _ in range(4):
        run_json.write_text(json.dumps(record))
        # output_dir is part of the config, so the copy's hash differs
        process = _run(output_dir, "--resume", "--allow-config-change", wait=False)
        deadline = time.monotonic() + 300
        while json.loads(run_json.read_text())["stages"][stage]["started_at"] == previous_start:
            assert process.poll() is None, f"run ended before {stage} started again"
            assert time.monotonic() < deadline, f"{stage} never started"
            time.sleep(0.05)
        time.sleep(delay)
        os.kill(process.pid, signal.SIGKILL)
        process.wait()
        if json.loads(run_json.read_text())["stages"][stage]["status"] == "running":
            break
        delay /= 2
    else:
        pytest.fail(f"{stage} always finished before the kill")

    resumed = _run(output_dir, "--resume", "--allow-config-change")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    stages = json.loads(run_json.read_text())["stages"]
    assert all(item["status"] == "done" for item in stages.values())
    report = "eval/report.json"
    assert json.loads((output_dir / report).read_text()) == json.loads(
        (finished_run / report).read_text())
    merged = "merged/model.safetensors"
    assert (output_dir / merged).read_bytes() == (finished_run / merged).read_bytes()
    gguf = "export/gguf/model-q8_0.gguf"
    assert (output_dir / gguf).stat().st_size == (finished_run / gguf).stat().st_size
    for directory in ("merged", "export/gguf"):
        assert problem(output_dir / directory) is None
    leftovers = [p for p in output_dir.rglob("*") if ".tmp" in p.name or p.name.startswith(
        (".prepare-", ".merge", ".export"))]
    assert leftovers == []
