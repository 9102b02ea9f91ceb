"""report.html from a real finished run (the shortened quickstart, ``finished_run``): its
sections and numbers, the CLI, and a real browser."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from html import escape
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from rich.console import Console

from lorapipe.artifacts import RunPaths
from lorapipe.cli import main
from lorapipe.report.page import EVAL_COLOR, LOSS_COLOR
from lorapipe.report.svg import Series, histogram, line_chart, ticks
from lorapipe.summary import print_run_summary


def _metrics(root: Path) -> list[dict]:
    return [json.loads(line) for line in (root / "metrics.jsonl").read_text().splitlines()]


def _polyline(html: str, series: str) -> list[tuple[float, float]]:
    found = re.findall(rf'<polyline class="series" data-series="{series}" [^>]*points="([^"]*)"',
                       html)
    assert len(found) == 1, series
    return [tuple(map(float, point.split(","))) for point in found[0].split()]


def test_run_writes_the_report_and_its_summary_names_it(finished_run: Path) -> None:
    report = finished_run / "report.html"
    assert report.is_file()
    assert not list(finished_run.glob(".report.html.*"))  # written atomically: no temp left
    summaries = {name: stage["summary"] for name, stage in
                 json.loads((finished_run / "run.json").read_text())["stages"].items()}
    console = Console(record=True, width=300)
    print_run_summary(summaries, RunPaths(finished_run), console)
    text = console.export_text()
    assert f"{report}  " in text  # with the deliverables, and its size
    assert f"next: open {report} in a browser · talk to the model: lorapipe chat " \
           f"{finished_run}" in text


def test_the_report_holds_every_section_with_the_runs_numbers(finished_run: Path) -> None:
    root = finished_run
    html = (root / "report.html").read_text()
    for section in ("stages", "training", "evaluation", "sample-replies", "data", "model",
                    "configuration", "versions"):
        assert f'<section id="{section}">' in html
    assert 'class="missing"' not in html  # a finished run lacks nothing

    steps = [r for r in _metrics(root) if "loss" in r and "event" not in r]
    assert f"last loss {steps[-1]['loss']:.4g}" in html
    evaluation = json.loads((root / "eval" / "report.json").read_text())["perplexity"]
    for metric in ("response", "prompt", "all"):
        assert f">{evaluation['base'][metric]:.4g}<" in html
        assert f">{evaluation['finetuned'][metric]:.4g}<" in html
    data = json.loads((root / "data" / "report.json").read_text())
    assert f">{data['records_read']:,}<" in html and ">duplicate<" in html
    for sample in map(json.loads, (root / "eval" / "samples.jsonl").read_text().splitlines()):
        assert sample["reference"] in html
    run = json.loads((root / "run.json").read_text())
    assert f">{run['versions']['torch']}<" in html and run["config_hash"] in html
    assert "output_dir: " in html  # the resolved config
    model = json.loads((root / "model_report.json").read_text())
    for entry in model["targets"]["not_adapted"]:  # what was not fine-tuned, and why
        assert f">not adapted: {entry['name']}<" in html and escape(entry["reason"]) in html


def test_each_curve_has_a_point_per_logged_step(finished_run: Path) -> None:
    root = finished_run
    html = (root / "report.html").read_text()
    records = _metrics(root)
    steps = [r for r in records if "loss" in r and "event" not in r]
    evals = [r for r in records if "eval_loss" in r]
    assert len(steps) >= 3 and len(evals) >= 2
    for series in ("train loss", "lr", "grad norm", "tokens/s", "rss", "peak rss"):
        assert len(_polyline(html, series)) == len(steps), series
    assert len(_polyline(html, "eval loss")) == len(evals)
    # steps run left to right, and the highest loss is the highest point (smallest y)
    loss = _polyline(html, "train loss")
    assert [x for x, _ in loss] == sorted(x for x, _ in loss)
    highest = min(range(len(loss)), key=lambda i: loss[i][1])
    assert steps[highest]["loss"] == max(r["loss"] for r in steps)
    assert html.count('<rect class="bar"') > 0  # the length histograms


def test_the_report_loads_nothing_from_anywhere(finished_run: Path) -> None:
    html = (finished_run / "report.html").read_text()
    assert "default-src 'none'" in html  # the browser refuses any load, see the browser test
    for outside in ("http://", "https://", "src=", "<script", "<link", "url(", "@import"):
        assert outside not in html, outside


def test_report_command_on_a_partial_run_says_what_is_missing(
        finished_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Stopped in training, with a line torn by kill -9 and hostile text in a reply."""
    root = finished_run
    partial = tmp_path / "partial"
    partial.mkdir()
    for name in ("run.json", "config.resolved.yaml", ".lorapipe-run"):
        shutil.copy(root / name, partial / name)
    lines = (root / "metrics.jsonl").read_text().splitlines()[:4]
    (partial / "metrics.jsonl").write_text("\n".join(lines) + '\n{"step": 9, "lo')
    (partial / "eval").mkdir()
    (partial / "eval" / "samples.jsonl").write_text(json.dumps(
        {"prompt": [{"role": "user", "content": "<b>hi</b>"}], "reference": "a & b",
         "base": "<script>alert(1)</script>", "finetuned": "</div><img src=x>"}) + "\n")

    assert main(["report", str(partial)]) == 0
    assert str(partial / "report.html") in capsys.readouterr().out
    html = (partial / "report.html").read_text()
    assert "No eval/report.json: the evaluate stage has not run." in html
    assert "No data/report.json: the prepare stage has not run." in html
    assert "No model_report.json" in html
    assert len(_polyline(html, "train loss")) == sum(
        1 for line in lines if '"loss"' in line and '"event"' not in line)
    assert "<script" not in html and "<img" not in html and "<b>hi" not in html
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html and "a &amp; b" in html


def test_gpu_memory_training_events_and_forgetting_are_shown(tmp_path: Path) -> None:
    """What the tiny CPU run never logs: CUDA memory, spikes, a forgetting check."""
    (tmp_path / "run.json").write_text(json.dumps({"stages": {"train": {"status": "failed",
                                                                        "error": "CUDA OOM"}}}))
    gib = 2**30
    records = [{"step": s, "loss": 2.0, "lr": 1e-4, "grad_norm": 1.0, "tokens_per_s": 900.0,
                "memory": {"rss_bytes": 3 * gib, "cuda_reserved_bytes": 20 * gib}}
               for s in (10, 20)]
    records += [{"step": 20, "event": "spike", "action": "skip", "loss": 9.5},
                {"event": "memory", "stage": "baseline", "rss_bytes": gib}]
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    (tmp_path / "eval").mkdir()
    (tmp_path / "eval" / "report.json").write_text(json.dumps({"perplexity": {
        "base": {"response": 9.0}, "finetuned": {"response": 3.0}, "change": {"response": -6.0},
        "general": {"wiki": {"base": 20.0, "finetuned": 23.0, "increase": 0.15,
                             "forgetting": True}}, "split": "validation"}}))

    assert main(["report", str(tmp_path)]) == 0
    html = (tmp_path / "report.html").read_text()
    assert ">CUDA OOM<" in html and "memory (GiB)" in html
    assert len(_polyline(html, "cuda reserved")) == 2
    assert ">spike<" in html and "&quot;loss&quot;: 9.5" in html
    assert ">baseline<" in html and ">1.0 GiB<" in html  # memory at the stage transition
    assert ">on wiki (forgetting)<" in html and ">+15.0%<" in html
    assert "Scores on the validation split" in html


def test_report_command_refuses_what_is_not_a_run(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["report", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "not a lorapipe run directory" in err and "Traceback" not in err
    assert main(["report", str(tmp_path / "nowhere")]) == 2
    assert "nowhere: not a directory" in capsys.readouterr().err
    (tmp_path / "config.yaml").write_text("output_dir: runs/x\n")  # a config, not its run
    assert main(["report", str(tmp_path / "config.yaml")]) == 2
    assert "config.yaml: not a directory" in capsys.readouterr().err
    assert not (tmp_path / "report.html").exists()


def test_chart_helpers() -> None:
    assert ticks(0, 1) == [0, 0.2, 0.4, 0.6, 0.8, 1.0]
    assert ticks(3.2, 7.9) == [4, 5, 6, 7]
    svg = line_chart("loss", [Series("a", [(1, 2.0), (2, float("nan")), (3, 1.0)], "#000")])
    assert len(re.search(r'points="([^"]*)"', svg)[1].split()) == 2  # the NaN is left out
    assert "nothing logged" in line_chart("empty", [Series("a", [], "#000")])
    bars = histogram("h", [1, 2, 2, 3, 40], x_label="tokens", color="#000")
    counts = [int(n) for n in re.findall(r": (\d+)</title></rect>", bars)]
    assert sum(counts) == 5


# --- in a real browser ------------------------------------------------------------------


@pytest.fixture(scope="module")
def chromium() -> str:
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if found:
        return found
    if os.environ.get("CI"):
        pytest.fail("chromium is missing; .ci/run installs it (apt-get install chromium)")
    pytest.skip("chromium is not installed (apt-get install chromium; CI installs it)")


def _open(chromium: str, page: Path, tmp_path: Path) -> tuple[list[str], Image.Image]:
    """Console messages and a screenshot of ``page`` in headless Chromium."""
    shot = tmp_path / f"{page.stem}.png"
    result = subprocess.run(
        [chromium, "--headless=new", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
         f"--user-data-dir={tmp_path / 'profile'}", "--window-size=1200,3000",
         "--enable-logging=stderr", "--v=0", f"--screenshot={shot}", page.as_uri()],
        capture_output=True, text=True, timeout=180, check=False,
    )
    assert result.returncode == 0 and shot.is_file(), result.stderr[-3000:]
    console = [line for line in result.stderr.splitlines() if ":CONSOLE" in line]
    return console, Image.open(shot).convert("RGB")


def _pixels(image: Image.Image, color: str, box: tuple[int, int, int, int]) -> int:
    """How many pixels in ``box`` are (nearly: anti-aliasing) ``color``."""
    want = np.array([int(color[i:i + 2], 16) for i in (1, 3, 5)])
    pixels = np.asarray(image.crop(box), dtype=int)
    return int((np.abs(pixels - want) <= 24).all(axis=-1).sum())


def test_the_report_renders_in_chromium_with_its_curves(
        finished_run: Path, chromium: str, tmp_path: Path) -> None:
    report = finished_run / "report.html"
    console, image = _open(chromium, report, tmp_path)
    assert console == []
    assert image.size == (1200, 3000)
    # The training charts sit in the first screenful: the loss curve is drawn there.
    top = (0, 0, 1200, 1500)
    assert _pixels(image, LOSS_COLOR, top) > 300
    assert _pixels(image, EVAL_COLOR, top) > 30

    # The check above sees what goes wrong: a page that reaches out is refused and logged.
    reaching = tmp_path / "reaching.html"
    reaching.write_text(report.read_text().replace(
        "</body>", '<img src="https://example.com/pixel.png"></body>'))
    console, _ = _open(chromium, reaching, tmp_path)
    assert any("example.com" in line for line in console)
