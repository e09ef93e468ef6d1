"""Learned sparse retrieval: heads encode to at most ``top`` non-negative terms, the inverted index returns
the same top-k as a brute-force sparse product (filters included), and heads save and load."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from scipy import sparse

from crossmodal.search.sparse import SparseHeads, SparseIndex


def random_heads(dim: int = 16, vocab: int = 300, seed: int = 0) -> SparseHeads:
    rng = np.random.default_rng(seed)
    return SparseHeads("fp", np.arange(1000, 1000 + vocab), [f"w{i}" for i in range(vocab)],
                       {s: rng.normal(size=(dim, vocab)).astype(np.float32) for s in ("image", "text")},
                       {s: np.full(vocab, -0.5, np.float32) for s in ("image", "text")}, {"image": 24, "text": 8})


def test_heads_keep_at_most_top_non_negative_terms(tmp_path: Path) -> None:
    heads = random_heads()
    vectors = np.random.default_rng(1).normal(size=(50, 16)).astype(np.float32)
    rows = heads.encode(vectors, "image")
    assert rows.shape == (50, 300) and (rows.data > 0).all()
    assert np.diff(rows.indptr).max() <= 24 and np.diff(heads.encode(vectors, "text").indptr).max() <= 8
    full = np.log1p(np.maximum(vectors @ heads.weight["image"] + heads.bias["image"], 0))
    first = rows[0].toarray()[0]
    assert np.allclose(first[first > 0], full[0][first > 0], atol=1e-5)  # kept terms keep their weight
    assert first[first > 0].min() >= np.sort(full[0])[-24] - 1e-6  # and they are the largest
    heads.save(tmp_path / "h.npz")
    loaded = SparseHeads.load(tmp_path / "h.npz")
    assert loaded.top == heads.top and loaded.tokens == heads.tokens and loaded.id == SparseHeads.load(
        tmp_path / "h.npz").id
    assert abs(loaded.encode(vectors, "image") - rows).max() < 0.01  # float16 on disk


def test_index_top_k_equals_brute_force_sparse_product() -> None:
    rng = np.random.default_rng(2)
    items = sparse.random(2000, 500, density=0.02, format="csr", random_state=3, dtype=np.float32)
    queries = sparse.random(20, 500, density=0.03, format="csr", random_state=4, dtype=np.float32)
    ids = np.sort(rng.choice(10**6, 2000, replace=False))
    index = SparseIndex(ids, items)
    brute = (queries @ items.T).toarray()
    allowed = ids[::3]
    for (scores, found), (f_scores, f_found), row in zip(index.search(queries, 10), index.search(queries, 10, allowed),
                                                       brute, strict=True):
        expected = np.lexsort((ids, -row))[:10]
        expected = expected[row[expected] > 0]
        assert found.tolist() == ids[expected].tolist() and np.allclose(scores, row[expected], atol=1e-5)
        masked = np.where(np.isin(ids, allowed), row, 0)
        expected = np.lexsort((ids, -masked))[:10]
        expected = expected[masked[expected] > 0]
        assert f_found.tolist() == ids[expected].tolist() and np.allclose(f_scores, masked[expected], atol=1e-5)
    assert index.nbytes() == items.nnz * 6 + 4 * 501 or index.nbytes() == items.nnz * 6 + 8 * 501


def test_a_collection_searches_its_sparse_index_and_keeps_it_in_step(tmp_path: Path) -> None:
    from conftest import ColorEncoder, make_photo
    from crossmodal import Collection
    from crossmodal.search.pipeline import Ranking

    encoder = ColorEncoder()
    heads = random_heads()
    heads.fingerprint = encoder.fingerprint
    folder = tmp_path / "photos"
    for i in range(12):
        make_photo(folder / f"p{i}.jpg", (20 * i, 240 - 20 * i, 90), noise=6)
    with Collection.open(tmp_path / "c", model=encoder) as c:
        heads.save(c.folder / "sparse.npz")
        c.index_folder(folder, progress=False)

        def brute(text: str) -> list[int]:
            ids, vectors = c.store.matrix("image")
            query = heads.encode(encoder.encode_texts([text]), "text")
            scores = (query @ heads.encode(vectors, "image").T).toarray()[0]
            order = np.lexsort((ids, -scores))
            return [int(ids[i]) for i in order if scores[i] > 0][:5]

        sparse_search = Ranking(retriever="sparse")
        assert [h.id for h in c.search("red green", k=5, ranking=sparse_search)] == brute("red green")
        assert (c.folder / "index" / "sparse-image.npz").is_file()
        (folder / "p3.jpg").unlink()
        make_photo(folder / "new.jpg", (5, 5, 250))
        c.index_folder(folder, progress=False)
        assert [h.id for h in c.search("red green", k=5, ranking=sparse_search)] == brute("red green")
        assert len(c.sparse.get("image")) == 12


def test_lite_ships_sparse_heads_over_wordpiece_words() -> None:
    from crossmodal.encoders import load_encoder
    from crossmodal.search.sparse import find_sparse

    encoder = load_encoder("lite")
    heads = find_sparse(encoder.fingerprint)
    assert heads is not None and heads.top == {"image": 64, "text": 32}
    row = heads.encode(encoder.encode_texts(["a black dog runs on the beach"]), "text")
    words = [w for w, _ in heads.terms(row[0], 8)]
    assert len({"black", "dog", "running", "beach"} & set(words)) >= 2  # its own words are among its heaviest


def test_train_sparse_keeps_the_best_dev_epoch() -> None:
    """Training on vectors whose captions sit near their photos, with each photo's own words: every epoch is
    measured on dev as eval ranks the sparse retriever, and the heads kept are those of the best epoch."""
    from crossmodal.training.train_sparse import Features, SparseConfig, train_sparse

    rng = np.random.default_rng(0)

    def split(n: int) -> tuple[Features, list[np.ndarray]]:
        photos = rng.normal(size=(n, 8)).astype(np.float32)
        owner = np.repeat(np.arange(n), 2)
        texts = photos[owner] + 0.1 * rng.normal(size=(2 * n, 8)).astype(np.float32)
        unit = [v / np.linalg.norm(v, axis=1, keepdims=True) for v in (photos, texts)]
        return Features(unit[0], unit[1], owner), [np.array([i % 12, 12 + i % 7]) for i in owner]

    (train, bags), (dev, _) = split(40), split(10)
    tokens = [f"w{i}" for i in range(19)]
    heads, history = train_sparse(train, bags, dev, np.arange(19), tokens, "abc", SparseConfig(epochs=3, batch_size=8),
                                  log=lambda _: None)
    assert [h["epoch"] for h in history] == [0, 1, 2] and all(0 <= h["rsum"] <= 600 for h in history)
    assert heads.fingerprint == "abc" and heads.tokens == tokens
