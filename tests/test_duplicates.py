"""Near-duplicate photos: exact copies and near-copies (crop, re-encode, resize) grouped, distinct photos not,
through exact range search and through an approximate index; `crossmodal duplicates`; photo headers."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from conftest import SAMPLES
from crossmodal import Collection
from crossmodal.cli import app
from crossmodal.collection.duplicates import DEFAULT_THRESHOLD, components, find_duplicates, similar_pairs
from crossmodal.sources.photo_files import dimensions

ORIGINAL, TWIN = "1679557684_50a206e4a9.jpg", "111497985_38e9f88856.jpg"
runner = CliRunner()


def test_components_join_edges_transitively() -> None:
    labels = components(7, np.array([0, 2, 5]), np.array([1, 1, 4]))
    assert labels[0] == labels[1] == labels[2] and labels[4] == labels[5]
    assert len({labels[0], labels[3], labels[4], labels[6]}) == 4
    chain = components(1000, np.arange(999), np.arange(1, 1000))  # a long path is one component
    assert (chain == 0).all()


def test_similar_pairs_keep_those_at_the_threshold() -> None:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(50, 16)).astype(np.float32)
    x[7] = x[3] + 0.05 * rng.normal(size=16)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    a, b = similar_pairs(x, 0.95)
    assert list(zip(a.tolist(), b.tolist(), strict=True)) == [(3, 7)]
    at = float(x[3] @ x[7])
    assert len(similar_pairs(x, at)[0]) == 1 and len(similar_pairs(x, at + 1e-4)[0]) == 0


@pytest.fixture(scope="module")
def copies(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The sample photos, an exact copy of one, and a crop, a JPEG re-encode and a resize of another,
    indexed with the default model."""
    root = tmp_path_factory.mktemp("dups")
    photos = root / "photos"
    shutil.copytree(SAMPLES / "photos", photos)
    shutil.copy(photos / TWIN, photos / "twin-copy.jpg")
    with Image.open(photos / ORIGINAL) as im:
        im.crop((15, 10, 210, 214)).save(photos / "dog-crop.jpg", quality=90)
        im.save(photos / "dog-q60.jpg", quality=60)
        im.resize((180, 180), Image.LANCZOS).save(photos / "dog-small.png")
    with Collection.open(root / "col") as c:
        c.index_folder(photos, progress=False)
    return root


def _names(groups) -> list[set[str]]:
    return [{Path(p.path).name for p in g.photos} for g in groups]


def test_exact_and_near_copies_are_grouped_and_distinct_photos_are_not(copies: Path) -> None:
    with Collection.open(copies / "col") as c:
        groups = find_duplicates(c)
    assert _names(groups) == [{ORIGINAL, "dog-crop.jpg", "dog-q60.jpg", "dog-small.png"}, {TWIN, "twin-copy.jpg"}]
    dog, twin = groups
    assert Path(dog.photos[0].path).name == ORIGINAL  # the largest first
    assert dog.photos[0].similarity == pytest.approx(1.0) and all(p.similarity >= DEFAULT_THRESHOLD for p in dog.photos)
    small = next(p for p in dog.photos if p.path.endswith("dog-small.png"))
    assert (small.width, small.height) == (180, 180) and not small.exact and small.bytes > 0
    assert all(p.exact for p in twin.photos) and twin.photos[0].width == 224
    with Collection.open(copies / "col") as c:
        assert _names(find_duplicates(c, 0.999)) == [{TWIN, "twin-copy.jpg"}]  # exact copies at any threshold
        with pytest.raises(ValueError, match="cosine"):
            find_duplicates(c, 0.0)


def test_an_approximate_index_finds_the_same_groups(copies: Path, tmp_path: Path) -> None:
    shutil.copytree(copies / "col", tmp_path / "col")
    with Collection.open(tmp_path / "col") as c:
        expected = _names(find_duplicates(c))
        c.configure_index("hnsw")
        assert c.indexes.get("image") is not None
        assert _names(find_duplicates(c)) == expected


def test_duplicates_command(copies: Path) -> None:
    result = runner.invoke(app, ["duplicates", "-c", str(copies / "col"), "--json"])
    assert result.exit_code == 0, result.output
    groups = json.loads(result.stdout)
    assert [g["size"] for g in groups] == [4, 2]
    assert {"id", "path", "bytes", "width", "height", "similarity", "exact", "taken"} <= set(groups[0]["photos"][0])
    text = runner.invoke(app, ["duplicates", "-c", str(copies / "col")])
    assert text.exit_code == 0 and "group 1: 4 photos" in text.stdout and "180x180" in text.stdout
    assert "exact" in text.stdout and "2 groups, 6 photos" in text.stderr
    bad = runner.invoke(app, ["duplicates", "-c", str(copies / "col"), "--threshold", "2"])
    assert bad.exit_code == 2


def test_dimensions_read_the_header_of_the_indexed_file_only(tmp_path: Path) -> None:
    path = tmp_path / "turned.jpg"
    exif = Image.Exif()
    exif[0x0112] = 6  # rotated a quarter turn: shown 40 wide, 60 high
    Image.new("RGB", (60, 40), "red").save(path, exif=exif)
    st = path.stat()
    assert dimensions(str(path), st.st_size, st.st_mtime) == (40, 60)
    assert dimensions(str(path), st.st_size + 1, st.st_mtime) is None  # changed since indexed
    assert dimensions(str(tmp_path / "gone.jpg"), 1, 1.0) is None


def test_duplicates_endpoint(copies: Path) -> None:
    from fastapi.testclient import TestClient

    from crossmodal.server.app import create_app

    with TestClient(create_app(copies / "col")) as client:
        found = client.get("/api/duplicates").json()
        assert found["total"] == 2 and [g["size"] for g in found["groups"]] == [4, 2]
        first = found["groups"][0]["photos"][0]
        assert first["thumbnail"] == f"/api/items/{first['id']}/thumbnail" and first["width"] == 224
        assert client.get("/api/duplicates", params={"threshold": 0.999, "limit": 1}).json()["total"] == 1
        assert client.get("/api/duplicates", params={"threshold": 0}).status_code == 422
        assert client.get("/api/duplicates", params={"limit": 0}).status_code == 422
