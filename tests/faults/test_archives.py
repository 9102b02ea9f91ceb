"""Compressed inputs that are not what their name says, cut short, corrupt, or built to
expand: one line naming the file (exit 2), or one dropped record, never a traceback or
all the memory there is."""

from __future__ import annotations

import gzip
import json
import subprocess
import sys
import zlib
from pathlib import Path

import pytest
import yaml

from lorapipe.cli import main
from lorapipe.plugins.loaders.jsonl import MAX_LINE_BYTES

SAMPLE = Path(__file__).resolve().parents[2] / "configs" / "data" / "quickstart.jsonl"
LINES = SAMPLE.read_bytes().count(b"\n")
MIB = 1 << 20


def _config(tmp_path: Path, data: Path) -> Path:
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump({
        "model": {"name_or_path": "tiny-llama"},
        "data": {"loader": {"name": "jsonl", "path": str(data)}},
        "output_dir": str(tmp_path / "run"),
    }))
    return path


def _report(tmp_path: Path) -> dict:
    return json.loads((tmp_path / "run" / "data" / "report.json").read_text())


def _refused(tmp_path: Path, data: Path, capsys: pytest.CaptureFixture[str]) -> str:
    """prepare's one-line error for ``data``, after checking it ends with exit 2."""
    assert main(["prepare", str(_config(tmp_path, data))]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    [line] = [line for line in err.splitlines() if line.startswith("error:")]
    return line


def _gzip_stream(path: Path, pieces: list[tuple[bytes, int]]) -> Path:
    """A gzip file of each ``(piece, times)`` repeated, compressed as it is written: the
    decompressed content is never in memory."""
    compressor = zlib.compressobj(9, zlib.DEFLATED, 31)  # wbits 31: a gzip header
    with path.open("wb") as handle:
        for piece, times in pieces:
            for _ in range(times):
                handle.write(compressor.compress(piece))
        handle.write(compressor.flush())
    return path


def test_a_gz_file_that_is_not_gzip_is_refused_naming_it(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = tmp_path / "plain.jsonl.gz"
    data.write_bytes(SAMPLE.read_bytes())
    assert _refused(tmp_path, data, capsys) == (
        f"error: data.loader.path: {data} is not a gzip file (Not a gzipped file (b'{{\"')); "
        "drop the .gz from its name if it is not compressed")


def test_a_truncated_gzip_is_refused_naming_the_file_and_the_line_reached(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    whole = gzip.compress(SAMPLE.read_bytes())
    data = tmp_path / "cut.jsonl.gz"
    data.write_bytes(whole[:len(whole) // 2])
    line = _refused(tmp_path, data, capsys)
    assert line.startswith(f"error: data.loader.path: {data} ends in the middle of its gzip "
                           "stream after line ")
    reached = int(line.split("after line ")[1].split(":")[0])
    assert 0 < reached < LINES
    assert line.endswith("it was cut short (an interrupted download or copy?); "
                         "fetch or copy it again")


def test_a_gzip_cut_inside_its_header_is_refused(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = tmp_path / "header.jsonl.gz"
    data.write_bytes(gzip.compress(SAMPLE.read_bytes())[:5])
    assert _refused(tmp_path, data, capsys) == (
        f"error: data.loader.path: {data} ends in the middle of its gzip stream: it was cut "
        "short (an interrupted download or copy?); fetch or copy it again")


def test_a_corrupt_deflate_stream_is_refused_naming_the_file_and_the_line_reached(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    damaged = bytearray(gzip.compress(SAMPLE.read_bytes()))
    damaged[len(damaged) // 2] ^= 0xFF
    data = tmp_path / "corrupt.jsonl.gz"
    data.write_bytes(bytes(damaged))
    line = _refused(tmp_path, data, capsys)
    assert line.startswith(f"error: data.loader.path: {data} is corrupt after line ")
    assert "decompressing data" in line or "CRC check failed" in line
    assert line.endswith("; fetch or copy it again")


LIMITED_PREPARE = r"""
import json, resource, sys
from pathlib import Path
import lorapipe.data.stage, transformers  # noqa: F401 (imported before the limit)
from lorapipe.cli import main
config, headroom = sys.argv[1:3]
status = Path("/proc/self/status").read_text().splitlines()
used = next(int(line.split()[1]) * 1024 for line in status if line.startswith("VmData:"))
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
resource.setrlimit(resource.RLIMIT_DATA, (used + int(headroom), resource.RLIM_INFINITY))
code = main(["prepare", config])
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
print(json.dumps({"code": code, "before": before, "peak": peak}))
"""


def test_a_gzip_bomb_line_is_one_dropped_record_in_bounded_memory(tmp_path: Path) -> None:
    """About 1 MB of gzip holding one 1 GiB line of zeros, between the sample's records,
    read under ``ulimit -d`` of 512 MiB above what the interpreter holds, half the line:
    a reader that holds the line whole ends in MemoryError. It is dropped and counted, and
    every other record is read."""
    sample = SAMPLE.read_bytes()
    cut = sample.index(b"\n", len(sample) // 2) + 1
    head, tail = sample[:cut], sample[cut:]
    bomb_line = head.count(b"\n") + 1
    data = _gzip_stream(tmp_path / "bomb.jsonl.gz",
                        [(head, 1), (b"0" * MIB, 1024), (b"\n", 1), (tail, 1)])
    assert data.stat().st_size < 2 * MIB
    done = subprocess.run([sys.executable, "-c", LIMITED_PREPARE,
                           str(_config(tmp_path, data)), str(512 * MIB)],
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["code"] == 0, done.stderr[-3000:]
    assert result["peak"] - result["before"] < 512 * MIB
    report = _report(tmp_path)
    assert report["records_read"] == LINES + 1
    assert report["dropped"].get("too_long") == 1
    [example] = report["examples"]["too_long"]
    assert example == {"location": f"{data}:{bomb_line}",
                       "detail": f"a line of {1024 * MIB:,} bytes, more than the "
                                 f"{MAX_LINE_BYTES:,} a record may take; dropped without "
                                 "parsing"}


def test_a_gzip_of_blank_lines_reads_as_no_records(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """100 MiB of newlines (and whitespace-only lines): read a buffer at a time, not line
    by line, and nothing in them is a record."""
    data = _gzip_stream(tmp_path / "blank.jsonl.gz", [(b"\n" * MIB, 100), (b" \t\r\n", 1000)])
    line = _refused(tmp_path, data, capsys)
    assert line.startswith("error: data.loader: no usable records")
    assert _report(tmp_path)["records_read"] == 0


@pytest.mark.parametrize("name", ["lines.jsonl", "lines.jsonl.gz"])
def test_blank_runs_and_long_lines_keep_every_line_number(
        tmp_path: Path, name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Blank runs longer than the read buffer, whitespace-only lines, a BOM, and lines at
    and past the limit (10 bytes here): each record keeps its own line number."""
    import lorapipe.plugins.loaders.jsonl as jsonl
    from lorapipe.authoring.file_loader import FileOptions

    monkeypatch.setattr(jsonl, "MAX_LINE_BYTES", 10)
    content = (b"\xef\xbb\xbf" + b'{"a":1}\n'  # 1: a BOM and 7 bytes, 10 in all
               + b"\n" * (3 * MIB)  # 2 .. 3 MiB + 1
               + b'{"a": 123}\n'  # 3 MiB + 2: exactly the limit
               + b" \t\r\n\n   \n"  # three blank lines
               + b'{"a": 1234}\n'  # 3 MiB + 6: one byte over
               + b"[" * (5 * MIB) + b"\n"  # 3 MiB + 7: over by megabytes
               + b" " * (2 * MIB) + b"\n"  # 3 MiB + 8: blank, longer than the buffer
               + b'{"a": 5}')  # 3 MiB + 9, with no line end
    data = tmp_path / name
    data.write_bytes(gzip.compress(content) if name.endswith(".gz") else content)
    records = list(jsonl.JsonlLoader(FileOptions(path=[str(data)])).records())
    first = 3 * MIB + 1
    assert [(r.location, r.data, r.error and r.error.detail) for r in records] == [
        (f"{data}:1", {"a": 1}, None),
        (f"{data}:{first + 1}", {"a": 123}, None),
        (f"{data}:{first + 5}", None,
         "a line of 11 bytes, more than the 10 a record may take; dropped without parsing"),
        (f"{data}:{first + 6}", None, f"a line of {5 * MIB:,} bytes, more than the 10 a record "
                                      "may take; dropped without parsing"),
        (f"{data}:{first + 8}", {"a": 5}, None),
    ]


@pytest.mark.parametrize("sample_by", ["document", "paragraph"])
def test_a_gzipped_text_file_reads_as_the_plain_one(tmp_path: Path, sample_by: str) -> None:
    from lorapipe.plugins.loaders.text import TextLoader, TextOptions

    content = "First paragraph,\r\nits second line.\n\n\nSecond paragraph.\n"
    plain, packed = tmp_path / "a.txt", tmp_path / "a.txt.gz"
    plain.write_text(content, newline="")
    packed.write_bytes(gzip.compress(content.encode()))
    read = {path: [(r.location.removeprefix(str(path)), r.data) for r in TextLoader(
        TextOptions(path=[str(path)], sample_by=sample_by)).records()]
        for path in (plain, packed)}
    assert read[plain] == read[packed] and read[plain]


def test_text_past_the_limits_is_one_bad_record_each(tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """A file, a paragraph or a line past its limit (small here) is dropped as too_long,
    naming what to do; the paragraphs around it are read."""
    import lorapipe.plugins.loaders.text as text

    monkeypatch.setattr(text, "MAX_DOCUMENT_BYTES", 40)
    monkeypatch.setattr(text, "MAX_LINE_BYTES", 20)
    doc = tmp_path / "doc.txt.gz"
    doc.write_bytes(gzip.compress(b"short\n\n" + b"word " * 30 + b"\n\nok\n\n"
                                  + b"\n".join([b"twelve bytes"] * 4) + b"\n\nend\n"))

    def read(sample_by: str) -> list[tuple[str, str | None, str | None]]:
        loader = text.TextLoader(text.TextOptions(path=[str(doc)], sample_by=sample_by))
        return [(r.location.removeprefix(str(doc)), r.data and r.data["text"],
                 r.error and r.error.reason) for r in loader.records()]

    assert read("document") == [("", None, "too_long")]
    assert read("paragraph") == [(":1", "short", None), (":3", None, "too_long"),
                                 (":5", "ok", None), (":7", None, "too_long"),
                                 (":12", "end", None)]


def test_a_text_gzip_bomb_is_one_dropped_document_in_bounded_memory(tmp_path: Path) -> None:
    """One 1 GiB line of zeros in 1 MB of gzip, read as one document and as paragraphs,
    under ``ulimit -d`` of 512 MiB above what the interpreter holds."""
    data = _gzip_stream(tmp_path / "bomb.txt.gz",
                        [(b"A first paragraph.\n\n", 1), (b"0" * MIB, 1024), (b"\n\nLast.\n", 1)])
    for sample_by, kept in (("document", 0), ("paragraph", 2)):
        config = tmp_path / f"{sample_by}.yaml"
        config.write_text(yaml.safe_dump({
            "model": {"name_or_path": "tiny-llama"},
            "data": {"loader": {"name": "text", "path": str(data), "sample_by": sample_by},
                     "format": "text", "dedupe": False, "validation": {"count": 1}},
            "output_dir": str(tmp_path / sample_by)}))
        done = subprocess.run([sys.executable, "-c", LIMITED_PREPARE, str(config),
                               str(512 * MIB)], capture_output=True, text=True)
        result = json.loads(done.stdout.strip().splitlines()[-1])
        assert result["peak"] - result["before"] < 512 * MIB
        report = json.loads((tmp_path / sample_by / "data" / "report.json").read_text())
        assert report["dropped"].get("too_long") == 1, report
        assert report["kept"] == kept


def test_a_flood_of_bad_records_is_counted_whole_and_listed_in_part(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A gzip of many `{}` lines: every one is counted with its reason, dropped.jsonl
    lists only the first LISTED_PER_REASON of them (small here) and says how many not."""
    import lorapipe.data.report as report_module

    monkeypatch.setattr(report_module, "LISTED_PER_REASON", 50)
    data = _gzip_stream(tmp_path / "flood.jsonl.gz", [(SAMPLE.read_bytes(), 1), (b"{}\n", 200)])
    assert main(["prepare", str(_config(tmp_path, data))]) == 0
    report = _report(tmp_path)
    [reason] = [r for r, n in report["dropped"].items() if n == 200]
    assert report["dropped_unlisted"] == {reason: 150}
    listed = (tmp_path / "run" / "data" / "dropped.jsonl").read_text().splitlines()
    assert sum(json.loads(row)["reason"] == reason for row in listed) == 50
    assert report["records_read"] == LINES + 200
