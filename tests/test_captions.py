"""Caption files read as written, or refused with the file and line: never silently corrupted."""

from __future__ import annotations

import codecs
from pathlib import Path

import pytest
from typer.testing import CliRunner

from crossmodal.cli import app
from crossmodal.sources.captions import MAX_CAPTION_CHARS, MAX_ROW_LINES, CaptionFileError, read_captions


def _write(path: Path, text: str) -> Path:
    path.write_bytes(text.encode("utf-8"))
    return path


def test_a_csv_with_a_byte_order_mark_reads_its_header(tmp_path: Path) -> None:
    csv = tmp_path / "excel.csv"
    csv.write_bytes(codecs.BOM_UTF8 + b"image,caption\r\na.jpg,a red car\r\nb.jpg,\"a dog, running\"\r\n")
    records, problems = read_captions(csv)
    assert not problems
    assert [(r.text, r.fields) for r in records] == [("a red car", {"image": "a.jpg"}),
                                                     ("a dog, running", {"image": "b.jpg"})]


def test_a_bom_before_a_tsv_or_jsonl_is_dropped(tmp_path: Path) -> None:
    tsv = tmp_path / "caps.tsv"
    tsv.write_bytes(codecs.BOM_UTF8 + b"image\tcaption\na.jpg\ta red car\n")
    assert [(r.text, r.fields) for r in read_captions(tsv)[0]] == [("a red car", {"image": "a.jpg"})]
    jsonl = tmp_path / "caps.jsonl"
    jsonl.write_bytes(codecs.BOM_UTF8 + b'{"image": "a.jpg", "caption": "a red car"}\n')
    assert [r.text for r in read_captions(jsonl)[0]] == ["a red car"]


def test_a_tsv_caption_with_an_unclosed_quote_swallows_nothing(tmp_path: Path) -> None:
    tsv = _write(tmp_path / "caps.tsv", 'image\tcaption\na.jpg\t"Stop, she said\nb.jpg\ta dog\nc.jpg\t"a cat" asleep\n')
    records, problems = read_captions(tsv)
    assert not problems
    assert [(r.text, r.fields["image"], r.line) for r in records] == [
        ('"Stop, she said', "a.jpg", 2), ("a dog", "b.jpg", 3), ('"a cat" asleep', "c.jpg", 4)]


def test_a_csv_quote_left_open_is_reported_with_its_line(tmp_path: Path) -> None:
    to_the_end = _write(tmp_path / "end.csv", 'image,caption\na.jpg,fine\nb.jpg,"Stop, she said\nc.jpg,a dog\n')
    with pytest.raises(CaptionFileError, match=r"end\.csv:3: a quote opened on this row is never closed"):
        read_captions(to_the_end)
    rows = "".join(f"x{i}.jpg,a dog\n" for i in range(MAX_ROW_LINES + 5))
    swallowing = _write(tmp_path / "many.csv", f'image,caption\na.jpg,"open\n{rows}b.jpg,"closed"\n')
    with pytest.raises(CaptionFileError, match=r"many\.csv:2: a quoted field runs over \d+ lines"):
        read_captions(swallowing)
    legit = _write(tmp_path / "multi.csv", 'image,caption\na.jpg,"two\nlines"\nb.jpg,a dog\n')
    records, _ = read_captions(legit)
    assert [(r.text, r.line) for r in records] == [("two\nlines", 2), ("a dog", 4)]


def test_invalid_utf8_names_the_file_and_line(tmp_path: Path) -> None:
    latin = tmp_path / "latin1.csv"
    latin.write_bytes("image,caption\na.jpg,a red car\nb.jpg,un café\n".encode("latin-1"))
    with pytest.raises(CaptionFileError, match=r"latin1\.csv:3: not UTF-8 \(byte 0xe9\)"):
        read_captions(latin)


def test_a_huge_csv_field_or_deep_json_is_an_error_with_its_line(tmp_path: Path) -> None:
    huge = _write(tmp_path / "huge.csv", f'image,caption\na.jpg,fine\nb.jpg,"{"x" * 200_000}"\nc.jpg,ok\n')
    with pytest.raises(CaptionFileError, match=r"huge\.csv:3: field larger than field limit"):
        read_captions(huge)
    deep = _write(tmp_path / "deep.jsonl", '{"caption": "fine"}\n' + "[" * 100_000 + "]" * 100_000 + "\n")
    with pytest.raises(CaptionFileError, match=r"deep\.jsonl:2: JSON nested too deeply"):
        read_captions(deep)


def test_over_long_and_non_text_captions_are_problems_with_their_line(tmp_path: Path) -> None:
    tsv = _write(tmp_path / "long.tsv", f"image\tcaption\na.jpg\t{'x' * (MAX_CAPTION_CHARS + 1)}\nb.jpg\ta dog\n"
                 f"c.jpg\t{'y' * 200_000}\n")
    records, problems = read_captions(tsv)
    assert [r.text for r in records] == ["a dog"]
    assert [p.split(": ")[0] for p in problems] == [f"{tsv}:2", f"{tsv}:4"]
    assert all("characters (over 10,000), skipped" in p for p in problems)
    jsonl = _write(tmp_path / "odd.jsonl", '{"caption": {"en": "a dog"}}\n{"caption": ["a"]}\n{"caption": 1984}\n')
    records, problems = read_captions(jsonl)
    assert [r.text for r in records] == ["1984"]
    assert problems == [f"{jsonl}:1: the caption is not text, skipped", f"{jsonl}:2: the caption is not text, skipped"]


def test_the_cli_prints_one_line_for_a_broken_caption_file(tmp_path: Path) -> None:
    deep = _write(tmp_path / "deep.jsonl", "[" * 100_000 + "]" * 100_000 + "\n")
    result = CliRunner().invoke(app, ["index", "--texts", str(deep), "-c", str(tmp_path / "col"), "-q"])
    assert result.exit_code == 2
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and "deep.jsonl:1: JSON nested too deeply" in lines[0], result.output


def test_the_field_limit_holds_when_another_library_raised_csvs(tmp_path: Path) -> None:
    import csv

    previous = csv.field_size_limit(2**31 - 1)  # what importing reverse_geocode does
    try:
        huge = _write(tmp_path / "huge.csv", f'image,caption\na.jpg,fine\nb.jpg,"{"x" * 200_000}"\nc.jpg,ok\n')
        with pytest.raises(CaptionFileError, match=r"huge\.csv:3: field larger than field limit"):
            read_captions(huge)
    finally:
        csv.field_size_limit(previous)
