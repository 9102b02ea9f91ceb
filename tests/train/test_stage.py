"""`lorapipe train` end to end: prepared data + the model stage's QLoRA model → adapter/."""

from __future__ import annotations

import json
from pathlib import Path

import yaml

from lorapipe.cli import main

REPO = Path(__file__).resolve().parents[2]


def test_lorapipe_train_writes_a_peft_adapter_and_refuses_a_changed_resume(
        tmp_path: Path, capsys) -> None:
    config = {
        "model": {"name_or_path": "tiny-llama", "quantizer": {"name": "nf4"}},
        "adapter": {"r": 4, "alpha": 8},
        "data": {"loader": {"name": "jsonl", "path": str(REPO / "configs/data/quickstart.jsonl")},
                 "max_length": 128, "validation": {"count": 8}},
        "train": {"max_steps": 3, "micro_batch_size": 4, "gradient_accumulation_steps": 1,
                  "eval_steps": 2, "save_steps": 2, "logging_steps": 1,
                  "gradient_checkpointing": False, "packing": True},
        "output_dir": str(tmp_path / "run"),
    }
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    assert main(["prepare", str(path)]) == 0
    assert main(["train", str(path)]) == 0
    run = tmp_path / "run"
    records = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in records if "loss" in r and "event" not in r]
    assert [r["step"] for r in steps] == [1, 2, 3]
    fields = {"epoch", "lr", "grad_norm", "trainable_tokens", "tokens_per_s", "seconds",
              "memory"}
    assert fields <= set(steps[0])
    assert [r["step"] for r in records if "eval_loss" in r] == [2, 3]
    transitions = [r["stage"] for r in records if r.get("event") == "memory"]
    assert transitions == ["baseline", "model_loaded", "adapters_injected", "training_peak"]
    report = json.loads((run / "model_report.json").read_text())
    assert report["memory"]["measured"]["training_peak"]["peak_rss_bytes"] > 0
    assert report["memory"]["estimate"]["total_bytes"] > 0
    lora = report["lora"]
    assert lora["rank"] == 4 and set(lora["modules"]) == set(report["targets"]["modules"])
    assert all(m["update_norm_mean"] > 0 and 1 <= m["directions_used_max"] <= 4
               for m in lora["modules"].values())

    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from lorapipe.model.source import resolve_model_path

    base = AutoModelForCausalLM.from_pretrained(resolve_model_path("tiny-llama"))
    PeftModel.from_pretrained(base, run / "adapter")

    capsys.readouterr()
    assert main(["train", str(path)]) == 2  # checkpoints exist: refuses to overwrite
    assert "--resume" in capsys.readouterr().err
    changed = ["--set", "train.learning_rate=1e-4"]
    assert main(["train", str(path), "--resume", *changed]) == 2
    assert "--allow-config-change" in capsys.readouterr().err
    assert main(["train", str(path), "--resume", "--allow-config-change", *changed]) == 0
