"""File names that are not valid UTF-8: stored losslessly, found again, never stopping a run."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from conftest import ColorEncoder, make_photo
from crossmodal import Collection
from crossmodal.collection.paths import decode_path, encode_path, shown
from crossmodal.server.app import create_app


def _odd_photo(folder: Path, name: bytes, color: tuple[int, int, int]) -> Path:
    """A photo whose name is the given bytes; skips the test where the filesystem refuses such names."""
    path = Path(os.fsdecode(os.fsencode(folder) + b"/" + name))
    try:
        make_photo(path, color)
    except (OSError, ValueError) as e:
        pytest.skip(f"the filesystem refuses non-UTF-8 names: {e}")
    if name not in os.listdir(os.fsencode(folder)):
        pytest.skip("the filesystem rewrote the non-UTF-8 name")
    return path


def test_path_encoding_keeps_unicode_names_and_round_trips_bytes() -> None:
    assert encode_path("/photos/été.jpg") == "/photos/été.jpg"
    odd = os.fsdecode(b"/photos/x\xff.jpg")
    assert encode_path(odd) == b"/photos/x\xff.jpg" and decode_path(encode_path(odd)) == odd
    assert shown(odd) == "/photos/x\\xff.jpg"


def test_a_non_utf8_name_is_indexed_found_and_unchanged_next_run(tmp_path: Path, encoder: ColorEncoder) -> None:
    root = tmp_path / "photos"
    make_photo(root / "plain.jpg", (200, 0, 0))
    odd = _odd_photo(root, b"x\xff.jpg", (0, 0, 200))
    c = Collection.open(tmp_path / "col", model=encoder)
    first = c.index_folder(root, progress=False)
    assert first.added == 2 and not first.failed

    stored = {Path(it.path).name: it for it in c.store.select("kind = 'image'")}
    item = stored[odd.name]
    assert os.fsencode(item.path) == os.fsencode(root) + b"/x\xff.jpg"
    assert Path(item.path).read_bytes() == odd.read_bytes()  # the stored path opens the real file
    assert c.store.image_by_path(str(odd)).id == item.id

    second = c.index_folder(root, progress=False)
    assert (second.unchanged, second.added, second.updated, second.removed) == (2, 0, 0, 0)

    hits = c.search_vector(c.store.vector(item.id), k=1)
    assert hits[0].id == item.id and hits[0].path == str(odd)
    assert json.dumps(hits[0].to_dict(), ensure_ascii=False).encode("utf-8")  # printable JSON
    assert hits[0].to_dict()["path"].endswith("x\\xff.jpg")
    globbed = c.search_vector(c.store.vector(item.id), k=5, path=f"{root}/x*")
    assert [h.id for h in globbed] == [item.id]  # a path glob sees names stored as bytes
    c.close()
    with TestClient(create_app(tmp_path / "col", model=encoder)) as client:
        found = client.post("/api/search", json={"text": "blue", "k": 5})
        assert found.status_code == 200 and any(r["path"].endswith("x\\xff.jpg") for r in found.json()["results"])
        assert client.get(f"/api/items/{item.id}").json()["path"].endswith("x\\xff.jpg")
    c = Collection.open(tmp_path / "col", model=encoder)

    odd.rename(root / "renamed.jpg")  # a rename keeps its id, and its old odd name is let go
    third = c.index_folder(root, progress=False)
    assert third.moved == 1 and c.store.image_by_path(str(root / "renamed.jpg")).id == item.id


def test_an_unreadable_photo_with_a_non_utf8_name_is_reported_and_skipped(tmp_path: Path,
                                                                          encoder: ColorEncoder) -> None:
    root = tmp_path / "photos"
    make_photo(root / "plain.jpg", (200, 0, 0))
    odd = _odd_photo(root, b"bad\xfe.jpg", (0, 0, 200))
    odd.write_bytes(b"not a photo")
    lines: list[str] = []
    c = Collection.open(tmp_path / "col", model=encoder)
    report = c.index_folder(root, progress=False, report=lines.append)
    assert report.added == 1 and [Path(p).name for p, _ in report.failed] == [odd.name]
    assert lines and "bad\\xfe.jpg" in lines[0]
    assert [Path(p).name for p, _ in c.store.failures()] == [odd.name]
    again = c.index_folder(root, progress=False, report=lines.append)
    assert again.skipped_known_bad == 1 and again.unchanged == 1
