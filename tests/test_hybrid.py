"""The keyword and hybrid retrievers: fusion on a hand-made example, and both through the one pipeline."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from conftest import SAMPLES, ColorEncoder, make_photo
from crossmodal import Collection
from crossmodal.search.hybrid import fuse, reciprocal_rank, weighted
from crossmodal.search.pipeline import Ranking


def test_weighted_fusion_by_hand() -> None:
    dense = np.array([0.50, 0.48, 0.30], dtype=np.float32)
    bm25 = np.array([0.0, 4.0, 2.0], dtype=np.float32)  # best BM25 4.0 -> shares 1.0 and 0.5
    assert np.allclose(weighted(dense, bm25, 0.1), [0.50, 0.58, 0.35])
    assert np.allclose(weighted(dense, np.zeros(3, np.float32), 0.1), dense)  # no words matched: dense as is
    everywhere = np.full(3, 1e-6, dtype=np.float32)  # a word every item holds: BM25 about 0, no share
    assert np.allclose(weighted(dense, everywhere, 0.1), dense, atol=1e-6)


def test_hybrid_list_is_the_union_ranked_by_fused_score() -> None:
    dense = (np.array([0.50, 0.48, 0.30], dtype=np.float32), np.array([7, 3, 9]))
    found = (np.array([4.0, 2.0], dtype=np.float32), np.array([3, 11]))  # 11: found by its words alone
    scores, ids = fuse(dense, found, dense_of=np.array([0.48, 0.45], dtype=np.float32), weight=0.1)
    assert ids.tolist() == [3, 7, 11, 9]
    assert np.allclose(scores, [0.58, 0.50, 0.50, 0.30])  # on a tie the dense list comes first


def test_reciprocal_rank_fusion_by_hand() -> None:
    dense = np.array([0.9, 0.8, 0.7], dtype=np.float32)
    bm25 = np.array([0.0, 1.0, 3.0], dtype=np.float32)
    assert np.allclose(reciprocal_rank(dense, bm25, k=60), [1 / 61, 1 / 62 + 1 / 62, 1 / 63 + 1 / 61])


@pytest.fixture
def collection(tmp_path: Path) -> Collection:
    folder = tmp_path / "photos"
    for i, name in enumerate(["eiffel_tower.jpg", "louvre.jpg", "beach.jpg", "forest.jpg"]):
        make_photo(folder / name, (60 * i, 200 - 40 * i, 90), noise=5)
    c = Collection.open(tmp_path / "c", model=ColorEncoder())
    c.index_folder(folder, progress=False)
    yield c
    c.close()


def names(hits: list) -> list[str]:
    return [Path(h.path).name for h in hits]


def test_keyword_and_hybrid_retrievers_in_the_pipeline(collection: Collection) -> None:
    dense = names(collection.search("eiffel", k=4))
    assert len(dense) == 4
    assert names(collection.search("eiffel", k=4, ranking=Ranking(retriever="keyword"))) == ["eiffel_tower.jpg"]
    hybrid = collection.search("eiffel", k=4, ranking=Ranking(retriever="hybrid"))
    assert names(hybrid)[0] == "eiffel_tower.jpg" and sorted(names(hybrid)) == sorted(dense)
    plain = {h.path: h.score for h in collection.search("eiffel", k=4)}
    assert all(abs(h.score - plain[h.path]) < 1e-5 for h in hybrid[1:])  # no words matched: dense scores
    only = collection.search("eiffel", k=4, where=["path!=x"], path="*louvre*", ranking=Ranking(retriever="hybrid"))
    assert names(only) == ["louvre.jpg"]  # filters bind keyword candidates too
    with pytest.raises(ValueError, match="unknown retriever"):
        Ranking(retriever="bm42")


def test_a_photo_query_has_no_keyword_evidence(collection: Collection, tmp_path: Path) -> None:
    query = make_photo(tmp_path / "q.jpg", (0, 200, 90), noise=5)
    assert collection.search(image=query, k=3, ranking=Ranking(retriever="keyword")) == []
    assert names(collection.search(image=query, k=3, ranking=Ranking(retriever="hybrid"))) == \
        names(collection.search(image=query, k=3))


def test_eval_ranks_with_the_chosen_retriever(tmp_path: Path) -> None:
    from crossmodal.evaluation.runner import evaluate
    from crossmodal.sources.datasets import CaptionDataset

    names = ["red", "green", "blue", "yellow"]
    images = [make_photo(tmp_path / f"{n}_square.jpg", c) for n, c in
              zip(names, [(220, 20, 20), (20, 220, 20), (20, 20, 220), (220, 220, 20)], strict=True)]
    data = CaptionDataset("tiny", images, [f"a {n} square" for n in names], np.arange(4))
    got = {r: evaluate(ColorEncoder(), data, progress=False, ranking=Ranking(norm=False, rerank=0, retriever=r))
           for r in ("dense", "keyword", "hybrid")}
    assert got["keyword"]["metrics"]["t2i_R@1"] == 100.0  # each caption names its photo's file
    assert got["keyword"]["pipeline"]["retriever"] == "keyword"
    assert got["hybrid"]["metrics"]["i2t_R@1"] == got["dense"]["metrics"]["i2t_R@1"]  # photo queries: no words
    assert got["hybrid"]["metrics"]["t2i_R@1"] >= got["dense"]["metrics"]["t2i_R@1"]



def test_retriever_on_the_command_line_and_the_api(tmp_path: Path) -> None:
    import json as jsonlib
    import shutil

    from fastapi.testclient import TestClient
    from typer.testing import CliRunner

    from crossmodal.cli import app
    from crossmodal.server.app import create_app

    samples = sorted((SAMPLES / "photos").iterdir())[:3]
    for name, sample in zip(["eiffel_tower.jpg", "louvre.jpg", "beach.jpg"], samples, strict=True):
        (tmp_path / "photos").mkdir(exist_ok=True)
        shutil.copy(sample, tmp_path / "photos" / name)
    folder = str(tmp_path / "c")
    runner = CliRunner()
    assert runner.invoke(app, ["index", str(tmp_path / "photos"), "--collection", folder, "-q"]).exit_code == 0
    cli = runner.invoke(app, ["search", "eiffel", "--collection", folder, "--retriever", "keyword", "--json"])
    assert cli.exit_code == 0, cli.output
    assert [Path(h["path"]).name for h in jsonlib.loads(cli.stdout)] == ["eiffel_tower.jpg"]
    bad = runner.invoke(app, ["search", "eiffel", "--collection", folder, "--retriever", "bm42"])
    assert bad.exit_code == 2 and "unknown retriever" in bad.output
    with TestClient(create_app(folder)) as client:
        got = client.post("/api/search", json={"text": "eiffel", "retriever": "keyword"}).json()
        assert [Path(h["path"]).name for h in got["results"]] == ["eiffel_tower.jpg"]
        scores = {r: {Path(h["path"]).name: h["score"] for h in client.post(
            "/api/search", json={"text": "eiffel", "retriever": r, "rerank": 0}).json()["results"]}
            for r in ("dense", "hybrid")}
        boost = scores["hybrid"].pop("eiffel_tower.jpg") - scores["dense"].pop("eiffel_tower.jpg")
        assert 0 < boost <= 0.1 + 1e-6  # a share of at most WEIGHT (BM25 under 1 in so small a collection)
        assert scores["hybrid"] == pytest.approx(scores["dense"])  # no words matched: dense scores
        assert client.post("/api/search", json={"text": "eiffel", "retriever": "bm42"}).status_code == 422
