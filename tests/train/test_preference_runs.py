"""Every preference objective runs through ``lorapipe run`` to merged/ and a GGUF that
llama.cpp loads: configs/dpo.yaml (shortened, from tiny-llama) with the objective swapped,
and for ``kto`` its pairs rewritten as unpaired replies rated desirable or not."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SHORT = ["train.epochs=1", "train.max_steps=2", "train.save_steps=2", "train.eval_steps=2",
         "train.logging_steps=1", "model.name_or_path=tiny-llama"]


def _unpaired(path: Path) -> Path:
    """Each pair as two rated replies: the chosen one desirable, the rejected one not."""
    rows = []
    for line in (REPO / "configs" / "data" / "preference.jsonl").read_text().splitlines()[:120]:
        pair = json.loads(line)
        if "prompt" not in pair:
            continue
        for side, label in (("chosen", True), ("rejected", False)):
            rows.append({"prompt": pair["prompt"], "completion": pair[side], "label": label})
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


@pytest.mark.parametrize("objective", ["simpo", "orpo", "kto"])
def test_objective_runs_to_merged_and_gguf(objective: str, tmp_path: Path) -> None:
    import llama_cpp  # installed by .ci/run
    from datasets import load_from_disk
    from transformers import AutoModelForCausalLM

    out = tmp_path / objective
    sets = [*SHORT, f"train.objective={{name: {objective}}}", f"output_dir={out}"]
    if objective == "kto":
        sets += [f"data.loader.path={_unpaired(tmp_path / 'unpaired.jsonl')}",
                 "evaluate.evaluators=[{name: perplexity}]"]  # `preference` scores pairs
    done = subprocess.run([sys.executable, "-m", "lorapipe.cli", "run", "configs/dpo.yaml",
                           *[item for kv in sets for item in ("--set", kv)]],
                          cwd=REPO, capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    rows = list(load_from_disk(str(out / "data" / "train")))
    kind = "unpaired" if objective == "kto" else "preference"
    assert {r["kind"] for r in rows} == {kind}
    if objective == "kto":
        assert {r["desirable"] for r in rows} == {0, 1}
    steps = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    metric = "kl" if objective == "kto" else "reward_accuracy"
    assert any(metric in s for s in steps) and any(f"eval_{metric}" in s for s in steps)
    AutoModelForCausalLM.from_pretrained(out / "merged")
    llm = llama_cpp.Llama(str(out / "export" / "gguf" / "model-q8_0.gguf"), verbose=False)
    assert llm.n_vocab() > 0
