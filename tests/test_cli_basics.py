"""What users expect of a command line: --version, list, remove, search --queries, a warning for a folder
without photos, readable summaries and help pages, and filters that say when they are wrong. Fast: a
collection of the test encoder, which the CLI gets by patching the loader."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from typer.testing import CliRunner

from conftest import ColorEncoder, make_photo
from crossmodal import Collection, __version__
from crossmodal.cli import app
from crossmodal.search.filters import parse_condition

runner = CliRunner()
COMMANDS = ["index", "reindex", "search", "duplicates", "info", "list", "remove", "bank", "serve", "export", "train",
            "eval", "eval compare"]


@pytest.fixture
def col(tmp_path: Path, photos: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Ten photos (five with album=paris), two texts; commands load the test encoder for it."""
    encoder = ColorEncoder()
    for module in ("collection", "searching"):  # making a collection, and loading its model on first use
        monkeypatch.setattr(f"crossmodal.collection.{module}.load_encoder", lambda name: encoder)
    with Collection.open(tmp_path / "col", model=encoder) as c:
        c.index_folder(photos / "a", fields={"album": "paris"}, progress=False)
        c.index_folder(photos / "b", progress=False)
        c.add_texts(["a red square", "a blue square"])
    return tmp_path / "col"


def run(*args: str, input: str | None = None) -> tuple[int, str, str]:
    result = runner.invoke(app, list(args), input=input)
    return result.exit_code, result.stdout, result.stderr


def test_version() -> None:
    assert run("--version") == (0, f"crossmodal {__version__}\n", "")


@pytest.mark.parametrize("command", COMMANDS)
def test_every_help_page_has_an_example_and_no_type_noise(command: str) -> None:
    code, out, _ = run(*command.split(), "--help")
    assert code == 0
    assert "Example" in out
    assert not re.search(r"<(bool|str|int|float|path|list)", out), out


def test_eval_usage_shows_that_it_runs_by_itself() -> None:
    _, out, _ = run("eval", "--help")
    assert "eval [OPTIONS] [compare REPORT_A REPORT_B]" in out
    assert "--dataset" in out


def test_list_shows_ids_paths_and_fields_with_filters(col: Path) -> None:
    code, out, _ = run("list", "-c", str(col))
    lines = [line.split("\t") for line in out.splitlines()]
    assert code == 0 and len(lines) == 12
    assert [int(line[0]) for line in lines] == sorted(int(line[0]) for line in lines)
    photos = [line for line in lines if line[1] == "image"]
    assert len(photos) == 10 and all(Path(line[2]).is_absolute() for line in photos)
    assert sum(line[3] == "album=paris" for line in photos) == 5
    assert [line[2] for line in lines if line[1] == "text"] == ["a red square", "a blue square"]

    def listed(*options: str) -> list[dict]:
        code, out, err = run("list", "-c", str(col), "--json", *options)
        assert code == 0, err
        return json.loads(out)

    assert {it["text"] for it in listed("--kind", "text")} == {"a red square", "a blue square"}
    assert len(listed("--where", "album=paris")) == 5
    assert all("/b/" in it["path"] for it in listed("--path", "*/b/*"))
    assert len(listed("--limit", "3")) == 3
    # != keeps what lacks the field: the photos of b and the texts
    assert len(listed("--where", "album!=paris")) == 7
    assert {it["kind"] for it in listed("--where", "size>0")} == {"image"}


def test_remove_by_id_path_folder_and_glob(col: Path, photos: Path) -> None:
    with Collection.open(col) as c:
        first, second = (it.id for it in c.store.select("kind = 'text' ORDER BY id"))
    code, out, err = run("remove", str(first), str(photos / "a" / "p0.jpg"), str(photos / "b"), "*/a/p1.jpg",
                         "-c", str(col))
    assert code == 0, err
    removed = [line.split("\t") for line in out.splitlines()]
    assert len(removed) == 8 and "removed 8 items" in err
    assert {line[2] for line in removed if line[1] == "image"} == {
        str(photos / "a" / "p0.jpg"), str(photos / "a" / "p1.jpg"), *(str(photos / "b" / f"p{i}.jpg") for i in
                                                                     range(5, 10))}
    with Collection.open(col) as c:
        assert len(c) == 4 and c.store.get([second])


def test_remove_refuses_a_target_that_names_nothing(col: Path) -> None:
    code, out, err = run("remove", "1", "999999", "*/nowhere/*", "-c", str(col))
    assert code == 2 and out == ""
    assert "'999999', '*/nowhere/*'" in err and "nothing was removed" in err
    with Collection.open(col) as c:
        assert len(c) == 12


def test_search_queries_file_gives_a_json_line_per_query(col: Path, tmp_path: Path) -> None:
    queries = tmp_path / "queries.txt"
    queries.write_text("a red square\n\n  a blue square  \n")
    code, out, err = run("search", "--queries", str(queries), "--texts", "--top", "2", "-c", str(col))
    assert code == 0, err
    lines = [json.loads(line) for line in out.splitlines()]
    assert [line["query"] for line in lines] == ["a red square", "a blue square"]
    with Collection.open(col) as c:
        for line in lines:
            alone = c.search(line["query"], kind="text", k=2)
            assert [h["id"] for h in line["hits"]] == [h.id for h in alone]
            assert [h["score"] for h in line["hits"]] == pytest.approx([h.score for h in alone], abs=1e-5)
    code, out, _ = run("search", "--queries", "-", "--texts", "--top", "1", "-c", str(col), input="a red square\n")
    assert code == 0 and json.loads(out)["hits"][0]["text"] == "a red square"


def test_search_queries_refuses_a_query_beside_it_and_an_empty_file(col: Path, tmp_path: Path) -> None:
    (tmp_path / "empty.txt").write_text("\n \n")
    code, _, err = run("search", "dog", "--queries", str(tmp_path / "empty.txt"), "-c", str(col))
    assert code == 2 and "takes the place of QUERY" in err
    code, _, err = run("search", "--queries", str(tmp_path / "empty.txt"), "-c", str(col))
    assert code == 2 and "no queries in it" in err


def test_index_warns_about_a_folder_without_photos(col: Path, tmp_path: Path) -> None:
    (tmp_path / "empty" / ".hidden").mkdir(parents=True)
    make_photo(tmp_path / "empty" / ".hidden" / "x.jpg", (10, 20, 30))
    code, _, err = run("index", str(tmp_path / "empty"), "-c", str(col), "-q")
    assert code == 0 and "warning" in err and "holds no photos" in err and "--hidden" in err


def test_summaries_print_no_python_dicts(col: Path, photos: Path) -> None:
    for args in (["info"], ["index", str(photos / "a"), "-q"], ["reindex", "--index", "flat"]):
        code, out, err = run(*args, "-c", str(col))
        assert code == 0, err
        assert not re.search(r"[{}]|'\w+': ", out + err), (args, out + err)
    _, out, _ = run("info", "-c", str(col))
    assert re.search(r"photo index\s+flat \(storage fp32\)", out) and re.search(r"photos\s+10", out)


@pytest.mark.parametrize(("spec", "message"), [
    ("size>abc", "size takes a number"),
    ("id=seven", "id takes a number"),
    ("mtime<yesterday", "mtime takes a number or a date"),
    ("size>nan", "size takes a number"),
    ("size>>3", "the value starts with '>'"),
    ("album==paris", "the value starts with '='"),
    ("album=<paris", "the value starts with '<'"),
    ("album", "expected KEY=VALUE"),
    ("=paris", "field names are"),
])
def test_filters_that_could_only_match_by_accident_are_errors(spec: str, message: str) -> None:
    with pytest.raises(ValueError, match=re.escape(message)):
        parse_condition(spec)


def test_filters_split_at_the_first_operator() -> None:
    condition = parse_condition("note=a<=b")
    assert (condition.key, condition.op, condition.value) == ("note", "=", "a<=b")
    assert parse_condition("mtime>=2023-06").value.text == "2023-06"
    assert parse_condition(" size >= 10 ").value == 10


def test_a_bad_filter_is_an_error_on_the_command_line(col: Path) -> None:
    for args in (["search", "red", "--where", "size>abc"], ["list", "--where", "size>>3"]):
        code, out, err = run(*args, "-c", str(col))
        assert code == 2 and out == "" and "bad filter" in err, (args, err)
