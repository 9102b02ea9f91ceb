"""The example configs of each data kind run end to end, shortened: prepare, train,
evaluate, merge (transformers loads merged/) and a GGUF llama.cpp loads."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHORT = ["train.epochs=1", "train.max_steps=3", "train.save_steps=3", "train.eval_steps=3",
         "train.logging_steps=1"]
# what each kind's prepared data must show
KINDS = {
    "tools": ("chat", lambda report, rows: any(r["tools"] for r in rows)
              and any('"tool_calls"' in r["messages"] for r in rows)),
    "reasoning": ("chat", lambda report, rows: report["added_samples"]["reasoning_turn"] > 0),
    "text": ("text", lambda report, rows: report["added_samples"]["block"] > 0),
    "completion": ("completion", lambda report, rows: report["kept"] > 140),
    # every shape of pair read; both sides kept
    "dpo": ("preference", lambda report, rows: report["kept"] > 300
            and all(r["rejected_input_ids"] for r in rows)),
}
# dpo.yaml starts from the quickstart's merged model; here from tiny-llama itself
SETS = {"dpo": ["model.name_or_path=tiny-llama"]}


@pytest.mark.parametrize("name", list(KINDS))
def test_example_config_runs_to_a_gguf(name: str, tmp_path: Path) -> None:
    import llama_cpp  # installed by .ci/run: this check must not skip quietly
    from datasets import load_from_disk
    from transformers import AutoModelForCausalLM

    out = tmp_path / name
    done = subprocess.run(
        [sys.executable, "-m", "lorapipe.cli", "run", f"configs/{name}.yaml",
         *[item for kv in [*SHORT, *SETS.get(name, []), f"output_dir={out}"]
           for item in ("--set", kv)]],
        cwd=REPO, capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    kind, shows = KINDS[name]
    report = json.loads((out / "data" / "report.json").read_text())
    rows = list(load_from_disk(str(out / "data" / "train")))
    assert {r["kind"] for r in rows} == {kind} and shows(report, rows)
    if name == "dpo":  # scored on the held-out pairs; curves and card show the rewards
        scores = json.loads((out / "eval" / "report.json").read_text())["preference"]
        assert 0 <= scores["finetuned"]["reward_accuracy"] <= 1
        assert "reward accuracy" in (out / "report.html").read_text()
        assert "| preference | test | reward_accuracy | — |" in (
            out / "merged" / "README.md").read_text()
    AutoModelForCausalLM.from_pretrained(out / "merged")
    llm = llama_cpp.Llama(str(out / "export" / "gguf" / "model-q8_0.gguf"), verbose=False)
    assert llm.n_vocab() > 0 and llm.tokenize(b"hello")
