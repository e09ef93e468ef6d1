"""Exact search, weighted queries, filters applied before ranking, and query-photo exclusion."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from conftest import ColorEncoder, make_photo
from crossmodal import Collection
from crossmodal.encoders.base import normalize
from crossmodal.search.exact import topk
from crossmodal.search.filters import parse_condition
from crossmodal.search.pipeline import Ranking
from crossmodal.search.query import Term, parse_term, query_vector


def test_topk_matches_brute_force_and_breaks_ties_by_row() -> None:
    rng = np.random.default_rng(0)
    vectors = normalize(rng.normal(size=(500, 12)).astype(np.float32))
    queries = normalize(rng.normal(size=(3, 12)).astype(np.float32))
    scores, rows = topk(vectors, queries, 7)
    expected = np.argsort(-(queries @ vectors.T), axis=1, kind="stable")[:, :7]
    assert np.array_equal(rows, expected)
    assert np.allclose(scores, np.take_along_axis(queries @ vectors.T, expected, axis=1))
    tied = np.ones((5, 4), dtype=np.float32)
    assert topk(tied, np.ones(4), 3)[1].tolist() == [[0, 1, 2]]
    many_ties = np.zeros((1000, 4), dtype=np.float32)
    many_ties[::3] = 1.0  # 334 rows tie for first place
    assert topk(many_ties, np.ones((2, 4)), 5)[1].tolist() == [[0, 3, 6, 9, 12]] * 2


@pytest.mark.parametrize("step", [7, 2])  # a sparse mask gathers its rows, a dense one masks scanned blocks
def test_topk_with_mask_and_blocks(monkeypatch: pytest.MonkeyPatch, step: int) -> None:
    import crossmodal.search.exact as exact

    monkeypatch.setattr(exact, "BLOCK", 16)
    rng = np.random.default_rng(1)
    vectors = rng.normal(size=(100, 8)).astype(np.float32)
    q = rng.normal(size=8).astype(np.float32)
    mask = np.zeros(100, dtype=bool)
    mask[::step] = True
    _, rows = topk(vectors, q, 5, mask)
    allowed = np.flatnonzero(mask)
    assert rows[0].tolist() == allowed[np.argsort(-(vectors[allowed] @ q))[:5]].tolist()
    assert topk(vectors, q, 50, mask)[1].shape == (1, mask.sum())


def test_parse_term_and_weighted_query(tmp_path: Path) -> None:
    photo = make_photo(tmp_path / "q.jpg", (9, 9, 9))
    assert parse_term("0.5:sunset") == Term.text("sunset", 0.5)
    assert parse_term("sunset", -1.0) == Term.text("sunset", -1.0)
    assert parse_term("note: not a weight") == Term.text("note: not a weight")
    assert parse_term(f"2:{photo}") == Term.image(photo, 2.0)
    enc = ColorEncoder()
    got = query_vector(enc, [Term.text("beach"), Term.text("people", -1), Term.text("sunset", 0.5)])
    t = enc.encode_texts(["beach", "people", "sunset"])
    assert np.allclose(got, normalize(t[0] - t[1] + 0.5 * t[2]), atol=1e-6)
    with pytest.raises(ValueError, match="cancel"):
        query_vector(enc, [Term.text("x"), Term.text("x", -1)])
    with pytest.raises(ValueError, match="empty"):
        query_vector(enc, [Term.text("  ")])


@pytest.fixture
def tagged(tmp_path: Path) -> Collection:
    enc = ColorEncoder()
    c = Collection.open(tmp_path / "col", model=enc)
    root = tmp_path / "photos"
    for i in range(12):
        make_photo(root / ("red" if i % 2 else "blue") / f"{i}.png", (20 * i, 10, 255 - 20 * i))
    c.index_folder(root / "red", fields={"album": "red", "n": 1}, progress=False)
    c.index_folder(root / "blue", fields={"album": "blue"}, progress=False)
    return c


def test_filters_apply_before_ranking(tagged: Collection) -> None:
    hits = tagged.search("anything", k=5, where=["album=red"])
    assert len(hits) == 5 and all(h.fields["album"] == "red" for h in hits)
    assert len(tagged.search("anything", k=10, path="*/blue/*")) == 6
    assert all("/blue/" in h.path for h in tagged.search("anything", k=10, path="*/blue/*"))
    assert tagged.search("anything", k=3, where=["n>=1", "album!=blue"])[0].fields["album"] == "red"
    assert tagged.search("anything", k=3, where=["album=none"]) == []
    with pytest.raises(ValueError, match="expected KEY=VALUE"):
        parse_condition("album")


def test_image_query_leaves_out_the_query_photo(tagged: Collection) -> None:
    query = tagged.store.select("kind='image' ORDER BY id LIMIT 1")[0]
    hits = tagged.search(image=query.path, k=11)
    assert len(hits) == 11 and query.id not in {h.id for h in hits}
    with_self = tagged.search(image=query.path, k=1, exclude_query_image=False)
    assert with_self[0].id == query.id and with_self[0].score == pytest.approx(1.0, abs=1e-5)


def test_results_are_sorted_and_scores_are_cosines(tagged: Collection) -> None:
    hits = tagged.search("a photo", k=12)
    scores = [h.score for h in hits]
    assert scores == sorted(scores, reverse=True) and len(hits) == 12
    q = tagged.encoder.encode_texts(["a photo"])[0]
    assert scores[0] == pytest.approx(float(tagged.store.vector(hits[0].id) @ q), abs=1e-5)


def test_search_texts_and_deletes_are_visible(tagged: Collection) -> None:
    tagged.add_texts(["red red red", "blue sky"])
    hits = tagged.search("red", kind="text", k=5)
    assert [h.text for h in hits][0] == "red red red" and len(hits) == 2
    tagged.remove([hits[0].id])
    assert [h.text for h in tagged.search("red", kind="text", k=5)] == ["blue sky"]


def test_exact_search_over_a_vector_file_out_of_id_order(tagged: Collection, tmp_path: Path) -> None:
    from crossmodal.collection.vector_file import GatheredRows

    for i in (2, 5):  # re-embedded: new rows at the end of the file, their old rows unused
        make_photo(tmp_path / "photos" / "blue" / f"{i}.png", (200, 200 - 30 * i, 40))
    tagged.index_folder(tmp_path / "photos" / "blue", fields={"album": "blue"}, progress=False)
    ids, matrix = tagged.store.matrix("image")
    assert isinstance(matrix, GatheredRows)
    vectors = np.asarray(matrix)
    blue = [i.id for i in tagged.store.select("kind = 'image' AND path LIKE '%blue%'")]
    for query, where in (("a photo", []), ("red", ["album=blue"])):
        q = tagged.encoder.encode_texts([query])[0]
        keep = np.isin(ids, blue) if where else np.ones(len(ids), dtype=bool)
        expected = ids[keep][np.argsort(-(vectors[keep] @ q), kind="stable")][:4]
        assert [h.id for h in tagged.search(query, k=4, where=where, ranking=Ranking(retriever="dense"))] == \
            expected.tolist()


def test_reopened_collection_answers_the_same(tagged: Collection) -> None:
    first = [(h.id, round(h.score, 6)) for h in tagged.search("red", k=5)]
    tagged.close()
    again = Collection.open(tagged.folder, model=ColorEncoder())
    assert [(h.id, round(h.score, 6)) for h in again.search("red", k=5)] == first
