"""The default model on real photos: Flickr8k `test` (skips when ../shared is absent)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from conftest import FLICKR, needs_flickr
from crossmodal.cli import app
from crossmodal.sources.datasets import load_flickr_layout

pytestmark = needs_flickr


@pytest.fixture(scope="module")
def test_split(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, list[str]]]:
    data = load_flickr_layout(FLICKR, "test")
    folder = tmp_path_factory.mktemp("flickr-test")
    for path in data.images:
        (folder / path.name).symlink_to(path)
    captions: dict[str, list[str]] = {}
    for text, owner in zip(data.texts, data.text_image, strict=True):
        captions.setdefault(data.images[owner].name, []).append(text.lower())
    col = folder.parent / "col"
    result = CliRunner().invoke(app, ["index", str(folder), "-c", str(col), "-q"])
    assert result.exit_code == 0, result.output
    return col, captions


@pytest.mark.parametrize(
    ("query", "words", "needed"),
    [("a dog", ("dog",), 5), ("a man riding a bicycle", ("bike", "bicycl"), 2), ("children in the snow", ("snow",), 3)],
)
def test_text_search_finds_matching_photos(test_split: tuple[Path, dict[str, list[str]]], query: str,
                                           words: tuple[str, ...], needed: int) -> None:
    col, captions = test_split
    result = CliRunner().invoke(app, ["search", query, "-c", str(col), "--top", "5", "--json"])
    hits = json.loads(result.stdout)
    assert len(hits) == 5
    matching = [h for h in hits if any(w in c for w in words for c in captions[Path(h["path"]).name])]
    assert len(matching) >= needed, [captions[Path(h["path"]).name][0] for h in hits]
