"""lite's caption-word evidence for the hybrid retriever (search/sparse_words.py): each photo's likeliest words
stored when it is encoded, the sparse index built from them, eval's rows the same, hybrid search fusing them."""

from __future__ import annotations

import shutil
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from conftest import sample_photos
from crossmodal import Collection
from crossmodal.search import hybrid
from crossmodal.search.pipeline import Ranking


@pytest.fixture(scope="module")
def lite():
    from crossmodal.encoders import load_encoder
    from crossmodal.search.rerank import find_reranker

    encoder = load_encoder("lite")
    reranker = find_reranker(encoder.fingerprint)
    if reranker is None or reranker.words is None:
        pytest.skip("lite ships no reranker with a word classifier")
    return encoder, reranker


def _brute(c: Collection, query: str) -> np.ndarray:
    """The word score of each stored photo (in id order) for a text query, computed here from the stored words."""
    ids, _ = c.store.matrix("image")
    words = c.store.reranker.words
    return (c.words.heads.text_rows([query]) @ words.photo_rows(c.store.photo_words(ids)).T).toarray()[0]


def _top(c: Collection, scores: np.ndarray, k: int) -> list[int]:
    ids, _ = c.store.matrix("image")
    return [int(ids[i]) for i in np.lexsort((ids, -scores)) if scores[i] > 0][:k]


def _index_top(c: Collection, query: str, k: int) -> list[int]:
    """The top ``k`` photos for a text query through the collection's word index."""
    return c.words.get("image").search(c.words.heads.text_rows([query]), k)[0][1].tolist()


def test_indexing_stores_each_photos_words_and_hybrid_search_fuses_them(tmp_path: Path, lite) -> None:
    from crossmodal.evaluation.runner import embed_dataset
    from crossmodal.search.sparse_words import WordSparse
    from crossmodal.sources.datasets import CaptionDataset

    encoder, reranker = lite
    folder = sample_photos(tmp_path / "photos", 12)
    with Collection.open(tmp_path / "c", model=encoder) as c:
        c.index_folder(folder, progress=False)
        assert (c.folder / "index" / "words-image.npz").is_file()  # built when indexing, not by the first search
        assert isinstance(c.words.heads, WordSparse)
        ids, _ = c.store.matrix("image")
        stored = c.store.photo_words(ids)
        assert all(r is not None and len(r) == reranker.words.top for r in stored)
        items = c.store.get(ids)
        data = CaptionDataset(name="s", images=[Path(items[int(i)].path) for i in ids], texts=["a dog"],
                              text_image=np.zeros(1, dtype=np.int64))
        evaluated = c.words.heads.dataset_rows(embed_dataset(encoder, data, progress=False, reranker=reranker))
        index = c.words.get("image")
        assert np.array_equal(index.ids, ids)
        assert np.allclose(index.rows.toarray(), evaluated["image"].toarray(), atol=2e-3)  # eval's rows: the same
        for query in ("a dog runs on the grass", "two children play on a beach"):
            words = _brute(c, query)
            assert _index_top(c, query, 5) == _top(c, words, 5) and np.count_nonzero(words) >= 5
            dense = Ranking(rerank=0, retriever="dense")
            plain = {h.id: h.score for h in c.search(query, k=12, ranking=dense)}
            fused = c.search(query, k=12, ranking=replace(dense, retriever="hybrid"))
            expected = [plain[int(i)] + hybrid.SPARSE_WEIGHT * w / words.max() for i, w in zip(ids, words, strict=True)]
            assert np.allclose([h.score for h in fused], sorted(expected, reverse=True), atol=1e-4)


def test_photos_get_their_words_when_the_reranker_gains_a_classifier(tmp_path: Path, lite) -> None:
    from crossmodal.search import rerank
    from crossmodal.search.rerank import RERANKER_DIR
    from crossmodal.search.sparse_words import WordSparse

    encoder, reranker = lite
    folder = sample_photos(tmp_path / "photos", 6)
    Collection.open(tmp_path / "c", model=encoder).close()
    own = tmp_path / "c" / RERANKER_DIR
    shutil.copytree(reranker.folder, own, ignore=shutil.ignore_patterns("words.npz"))
    rerank._load.cache_clear()
    try:
        with Collection.open(tmp_path / "c", model=encoder) as c:
            c.index_folder(folder, progress=False)
            assert c.store.reranker.words is None and c.words.heads is None
        shutil.copy(reranker.folder / "words.npz", own / "words.npz")
        rerank._load.cache_clear()
        with Collection.open(tmp_path / "c", model=encoder) as c:
            ids, _ = c.store.matrix("image")
            assert len(c.store.missing_tokens()) == 6 and c.store.photo_words(ids) == [None] * 6
            assert c.store.tokens(ids) is not None  # the reranker still reads them meanwhile
            assert isinstance(c.words.heads, WordSparse) and _index_top(c, "a dog on the grass", 3) == []
            c.index_folder(folder, progress=False)  # nothing changed on disk: each photo is read for its words
            assert c.store.missing_tokens() == [] and all(r is not None for r in c.store.photo_words(ids))
            expected = _top(c, _brute(c, "a dog on the grass"), 3)
            assert len(expected) >= 2 and _index_top(c, "a dog on the grass", 3) == expected
            assert c.store.db.execute("SELECT count(*) FROM rerank_tokens").fetchone()[0] == 12  # the old ones gone
    finally:
        rerank._load.cache_clear()
