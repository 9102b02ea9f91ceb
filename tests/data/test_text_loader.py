"""The ``text`` loader on real files: whole files or paragraphs, CRLF, BOM, bad bytes."""

from __future__ import annotations

import codecs
from pathlib import Path
from typing import Any

import pytest

from lorapipe.config.schema import ComponentRef
from lorapipe.errors import ConfigError
from lorapipe.plan import build_component
from lorapipe.plugin import Loader, RawRecord
from lorapipe.plugins.loaders.text import TextLoader
from lorapipe.registry import get_registry


def build(**options: Any) -> Loader:
    """The loader as a pipeline builds it from ``data.loader`` in YAML."""
    return build_component(get_registry(), "loader", "data.loader",
                           ComponentRef(name="text", **options), Loader)


def read(path: Path | str | list[str], **options: Any) -> list[RawRecord]:
    paths = path if isinstance(path, list) else str(path)
    return list(build(path=paths, **options).records())


def good(records: list[RawRecord]) -> list[tuple[str, str]]:
    assert all(record.error is None for record in records), records
    return [(record.location, record.data["text"]) for record in records]


def bad(records: list[RawRecord]) -> list[tuple[str, str, str]]:
    return [(record.location, record.error.reason, record.error.detail)
            for record in records if record.error is not None]


def test_the_registry_finds_it_by_name_through_its_entry_point() -> None:
    registry = get_registry()
    assert registry.get("loader", "text", "data.loader.name") is TextLoader
    assert "lorapipe" in registry.provider("loader", "text")


def test_options_are_checked_when_the_loader_is_built(tmp_path: Path) -> None:
    (tmp_path / "a.txt").write_text("words")
    assert build(path=str(tmp_path / "a.txt")).options.sample_by == "document"
    with pytest.raises(ConfigError, match=r"data\.loader\.sample_by"):
        build(path=str(tmp_path / "a.txt"), sample_by="line")
    with pytest.raises(ConfigError, match=r"data\.loader\.path.*no file matches"):
        build(path=str(tmp_path / "*.md"))


def test_file_mode_is_one_document_per_file_over_paths_and_globs(tmp_path: Path) -> None:
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "b.txt").write_text("Second file.\n\nStill the second file.\n")
    (tmp_path / "docs" / "a.txt").write_text("First file, no final newline")
    (tmp_path / "docs" / "sub").mkdir()  # a directory the glob matches is not a file
    (tmp_path / "README.md").write_text("# Title\n\n    indented code\n")
    (tmp_path / "notes.rst").write_text("Any extension is text.\n")
    records = read([str(tmp_path / "docs" / "*"), str(tmp_path / "README.md"),
                    str(tmp_path / "notes.rst"), str(tmp_path / "docs" / "a.txt")])
    assert good(records) == [
        (str(tmp_path / "docs" / "a.txt"), "First file, no final newline"),
        (str(tmp_path / "docs" / "b.txt"), "Second file.\n\nStill the second file.\n"),
        (str(tmp_path / "README.md"), "# Title\n\n    indented code\n"),
        (str(tmp_path / "notes.rst"), "Any extension is text.\n"),
    ]  # a file matched twice is read once
    assert all(record.source == record.location for record in records)


def test_paragraph_mode_is_one_document_per_block_located_by_its_first_line(
        tmp_path: Path) -> None:
    doc = tmp_path / "book.md"
    doc.write_text(
        "\n"                              # 1: leading blank lines are layout
        "# Chapter one\n"                 # 2
        "\n"                              # 3
        "It was a dark night.\n"          # 4
        "  The rain fell.\n"              # 5: indentation is content
        "\n"                              # 6
        "   \t\n"                         # 7: a line of spaces is blank too
        "\n"                              # 8
        "    code()\n"                    # 9
        "    more()  \n"                  # 10: so are trailing spaces
        "\n"                              # 11
        "The end, without a newline"      # 12
    )
    records = read(doc, sample_by="paragraph")
    assert good(records) == [
        (f"{doc}:2", "# Chapter one"),
        (f"{doc}:4", "It was a dark night.\n  The rain fell."),
        (f"{doc}:9", "    code()\n    more()  "),
        (f"{doc}:12", "The end, without a newline"),
    ]
    assert {record.source for record in records} == {str(doc)}


def test_crlf_line_ends_become_lf(tmp_path: Path) -> None:
    doc = tmp_path / "windows.txt"
    doc.write_bytes(b"one\r\ntwo\r\n\r\n\r\nthree\rstill three\r\n")
    assert good(read(doc)) == [(str(doc), "one\ntwo\n\n\nthree\rstill three\n")]
    assert good(read(doc, sample_by="paragraph")) == [
        (f"{doc}:1", "one\ntwo"), (f"{doc}:5", "three\rstill three")]


def test_a_leading_bom_is_dropped(tmp_path: Path) -> None:
    doc = tmp_path / "bom.txt"
    doc.write_bytes(codecs.BOM_UTF8 + "Über alles\n\nzweiter Absatz\n".encode())
    assert good(read(doc)) == [(str(doc), "Über alles\n\nzweiter Absatz\n")]
    assert good(read(doc, sample_by="paragraph")) == [
        (f"{doc}:1", "Über alles"), (f"{doc}:3", "zweiter Absatz")]
    blank_first = tmp_path / "bom-blank.txt"
    blank_first.write_bytes(codecs.BOM_UTF8 + b"\r\ntext\r\n")
    assert good(read(blank_first, sample_by="paragraph")) == [(f"{blank_first}:2", "text")]


def test_a_file_that_is_not_utf8_is_one_bad_record_and_reading_goes_on(
        tmp_path: Path) -> None:
    latin = tmp_path / "a-latin1.txt"
    latin.write_bytes("première ligne\n\ndeuxième".encode("latin-1"))
    fine = tmp_path / "b-fine.txt"
    fine.write_text("fine\n")
    records = read(str(tmp_path / "*.txt"))
    assert bad(records) == [(str(latin), "invalid_text",
                             "not UTF-8 (invalid continuation byte at byte 5)")]
    assert good(records[1:]) == [(str(fine), "fine\n")]
    # the offset is the file's, BOM included, so a hex editor finds the byte
    with_bom = tmp_path / "bom-latin1.md"
    with_bom.write_bytes(codecs.BOM_UTF8 + b"ok \xff")
    assert bad(read(with_bom)) == [(str(with_bom), "invalid_text",
                                    "not UTF-8 (invalid start byte at byte 6)")]


def test_in_paragraph_mode_bad_bytes_spoil_only_their_block(tmp_path: Path) -> None:
    doc = tmp_path / "mixed.txt"
    doc.write_bytes(b"good one\n\nstill good\nthen \xe9t\xe9\nand \xff\n\ngood again\n")
    records = read(doc, sample_by="paragraph")
    assert [record.location for record in records] == [f"{doc}:1", f"{doc}:3", f"{doc}:7"]
    # the first bad byte of the block, as an offset into the file
    assert bad(records) == [(f"{doc}:3", "invalid_text",
                             "not UTF-8 (invalid continuation byte at byte 26)")]
    assert good([records[0], records[2]]) == [(f"{doc}:1", "good one"),
                                              (f"{doc}:7", "good again")]


@pytest.mark.parametrize("sample_by", ["document", "paragraph"])
def test_a_file_without_text_is_reported_not_dropped(tmp_path: Path, sample_by: str) -> None:
    (tmp_path / "a-blank.txt").write_text("  \n\n\t\n")
    (tmp_path / "b-empty.txt").write_bytes(b"")
    (tmp_path / "c-bom-only.txt").write_bytes(codecs.BOM_UTF8 + b"\r\n")
    (tmp_path / "d-text.txt").write_text("text")
    records = read(str(tmp_path / "*.txt"), sample_by=sample_by)
    assert bad(records) == [(str(tmp_path / name), "empty_text", "the file has no text")
                            for name in ("a-blank.txt", "b-empty.txt", "c-bom-only.txt")]
    assert records[-1].data == {"text": "text"}


def test_paragraph_mode_reads_as_it_goes(tmp_path: Path) -> None:
    """A block is yielded once the next one starts, before the rest of the file is read."""
    doc = tmp_path / "growing.txt"
    doc.write_text("first\n\nsecond\n")
    records = build(path=str(doc), sample_by="paragraph").records()
    assert next(records).data == {"text": "first"}
    with doc.open("a") as handle:
        handle.write("written after the first block was read\n\nthird\n")
    assert [record.data for record in records] == [
        {"text": "second\nwritten after the first block was read"}, {"text": "third"}]


def test_the_fingerprint_follows_the_files_and_the_sampling(tmp_path: Path) -> None:
    doc = tmp_path / "doc.txt"
    doc.write_text("one\n\ntwo\n")
    first = build(path=str(doc)).fingerprint()
    assert first == build(path=str(doc)).fingerprint()
    assert build(path=str(doc), sample_by="paragraph").fingerprint() != first
    doc.write_text("one\n\ntwo!\n")
    assert build(path=str(doc)).fingerprint() != first
    doc.write_text("one\n\ntwo\n")
    assert build(path=str(doc)).fingerprint() == first
    (tmp_path / "new.txt").write_text("another file the glob now matches")
    assert build(path=str(tmp_path / "*.txt")).fingerprint() != first
