"""The ranking pipeline: normalisation biases, every index kind ranking by the normalised score, the
rerank stage, the score cutoff, and eval ranking the way search does."""

from __future__ import annotations

import asyncio
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import SAMPLES, ColorEncoder, make_photo
from crossmodal.collection.collection import Collection
from crossmodal.evaluation.metrics import evaluate_embeddings
from crossmodal.search.normalise import BANK_FILE, Bank, augment, augment_queries, build_bank, index_dim
from crossmodal.search.pipeline import Ranking, SetScores, cut, rerank_top


def unit(rng: np.random.Generator, n: int, dim: int) -> np.ndarray:
    x = rng.normal(size=(n, dim)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def test_bias_is_the_mean_of_the_top_k_reference_scores() -> None:
    rng = np.random.default_rng(0)
    texts, images, items = unit(rng, 50, 8), unit(rng, 30, 8), unit(rng, 5, 8)
    bank = Bank(texts, images, fingerprint="f", top_k=4)
    for kind, reference in (("image", texts), ("text", images)):
        expected = [np.mean(sorted((reference @ v).tolist(), reverse=True)[:4]) for v in items]
        assert np.allclose(bank.biases(kind, items), expected, atol=1e-6)
    small = Bank(texts[:2], images[:2], fingerprint="f", top_k=4)  # fewer references than k: all of them
    assert np.allclose(small.biases("image", items), (items @ texts[:2].T).mean(1), atol=1e-6)


@pytest.mark.parametrize("kind", ["flat", "hnsw", "ivfpq", "binary"])
def test_augmented_inner_product_is_the_normalised_score(kind: str) -> None:
    rng = np.random.default_rng(1)
    vectors, queries, bias = unit(rng, 6, 16), unit(rng, 3, 16), rng.random(6).astype(np.float32)
    width = index_dim(16, kind)
    assert width > 16 and width % {"ivfpq": 64, "binary": 8}.get(kind, 1) == 0
    got = augment_queries(queries, np.float32(0.75), width) @ augment(vectors, bias, width).T
    assert np.allclose(got, queries @ vectors.T - 0.75 * bias, atol=1e-6)
    plain = augment_queries(queries, np.float32(0.0), width) @ augment(vectors, bias, width).T
    assert np.allclose(plain, queries @ vectors.T, atol=1e-6)


def test_bank_file_round_trip(tmp_path: Path) -> None:
    rng = np.random.default_rng(2)
    bank = Bank(unit(rng, 20, 8), unit(rng, 10, 8), fingerprint="abc", top_k=3, share=0.5)
    opened = Bank.open(bank.save(tmp_path / "b.npz"))
    assert (opened.fingerprint, opened.top_k, opened.share, opened.id) == ("abc", 3, 0.5, bank.id)
    assert np.allclose(opened.vectors("texts"), bank.vectors("texts"), atol=1e-3)


def _photos(root: Path, n: int, seed: int) -> Path:
    rng = np.random.default_rng(seed)
    for i in range(n):
        make_photo(root / f"{i:02d}.png", tuple(int(v) for v in rng.integers(0, 255, 3)), noise=20)
    return root


@pytest.fixture
def banked(tmp_path: Path) -> Collection:
    """40 photos and 30 captions, with a bank of 25 other photos and words as references."""
    enc = ColorEncoder(dim=16)
    c = Collection.open(tmp_path / "col", model=enc)
    refs = _photos(tmp_path / "refs", 25, 7)
    words = ["red", "green", "blue", "dark", "light", "sky", "grass", "car", "dog", "sea"]
    rng = np.random.default_rng(3)
    build_bank(enc, [" ".join(rng.choice(words, 3)) for _ in range(40)], sorted(refs.iterdir()),
               progress=False).save(c.folder / BANK_FILE)
    c.close()
    c = Collection.open(tmp_path / "col", model=enc)
    c.index_folder(_photos(tmp_path / "p", 40, 5), progress=False)
    c.add_texts([" ".join(rng.choice(words, 4)) for _ in range(30)])
    return c


def test_a_collection_finds_its_models_own_bank_in_the_model_folder(tmp_path: Path) -> None:
    """A model folder (what `crossmodal train` writes) carries its bank: a collection of that model normalises with
    it, unless the collection has one of its own; lite and hub ids have no folder."""
    from crossmodal.encoders import model_folder

    model = tmp_path / "my-model"
    model.mkdir()
    enc = ColorEncoder(name=str(model), dim=16)
    rng = np.random.default_rng(0)
    Bank(rng.normal(size=(20, 16)), rng.normal(size=(10, 16)), enc.fingerprint, top_k=4, share=0.5).save(
        model / BANK_FILE)
    with Collection.open(tmp_path / "col", model=enc) as c:
        c.index_folder(_photos(tmp_path / "p", 6, 1), progress=False)
    with Collection.open(tmp_path / "col") as c:
        assert c.store.bank is not None and c.store.bank.path == model / BANK_FILE and c.store.bank.share == 0.5
        assert np.allclose(c.store.biases("image"), c.store.bank.biases("image", c.store.matrix("image")[1]),
                           atol=1e-5)
    Bank(rng.normal(size=(20, 16)), rng.normal(size=(10, 16)), enc.fingerprint, top_k=4).save(
        tmp_path / "col" / BANK_FILE)
    with Collection.open(tmp_path / "col") as c:
        assert c.store.bank.path == tmp_path / "col" / BANK_FILE  # the collection's own comes first
    assert (model_folder(str(model)), model_folder(f"{model}+mirror"), model_folder("lite"),
            model_folder("nobody/no-such-model")) == (model, model, None, None)


def _by_hand(c: Collection, query: np.ndarray, kind: str, share: float) -> list[tuple[int, float]]:
    ids, vectors = c.store.matrix(kind)
    scores = np.asarray(vectors) @ query - share * c.store.bank.biases(kind, np.asarray(vectors))
    order = np.lexsort((ids, -scores))
    return [(int(ids[i]), float(scores[i])) for i in order]


def test_search_ranks_by_the_normalised_score(banked: Collection) -> None:
    share = banked.store.bank.share
    assert banked.store.biases("image") is not None and banked.store.biases("text") is not None
    query = banked.encoder.encode_texts(["red sky"])[0]
    hits = banked.search("red sky", k=8)
    expected = _by_hand(banked, query, "image", share)[:8]
    assert [h.id for h in hits] == [i for i, _ in expected]
    assert np.allclose([h.score for h in hits], [s for _, s in expected], atol=1e-5)
    plain = banked.search("red sky", k=8, ranking=Ranking(norm=False))
    assert [(h.id, round(h.score, 5)) for h in plain] == [(i, round(s, 5)) for i, s in
                                                          _by_hand(banked, query, "image", 0.0)[:8]]
    photo = next(iter(banked.store.select("kind = 'image'"))).path
    captions = banked.search(image=photo, kind="text", k=5)  # a photo ranking captions: normalised too
    photo_vector = banked.encoder.encode_images([Image.open(photo).convert("RGB")])[0]
    assert [h.id for h in captions] == [i for i, _ in _by_hand(banked, photo_vector, "text", share)[:5]]
    similar = banked.search(image=photo, k=5, exclude_query_image=False)  # photo -> photos: plain score
    assert similar[0].path == photo and similar[0].score == pytest.approx(1.0, abs=1e-5)


@pytest.mark.parametrize("kind", ["hnsw", "binary", "flat"])
def test_every_index_kind_returns_the_exact_normalised_top_k(banked: Collection, kind: str) -> None:
    queries = ["red sky", "green grass dog", "blue sea", "dark car"]
    exact = [[(h.id, round(h.score, 4)) for h in banked.search(q, k=6)] for q in queries]
    exact_texts = [[round(h.score, 4) for h in banked.search(q, kind="text", k=5)] for q in queries]  # ties
    banked.configure_index(kind)
    if kind == "flat":  # flat fp32 is the snapshot itself; int8 storage goes through a FAISS index
        banked.configure_index("flat", memory=40 * 16)
    assert banked.indexes.get("image") is not None
    assert [[(h.id, round(h.score, 4)) for h in banked.search(q, k=6)] for q in queries] == exact
    assert [[round(h.score, 4) for h in banked.search(q, kind="text", k=5)] for q in queries] == exact_texts


def test_ivfpq_ranks_by_the_normalised_score(tmp_path: Path) -> None:
    rng = np.random.default_rng(4)
    words = [f"w{i}" for i in range(300)]
    enc = ColorEncoder(dim=32)
    c = Collection.open(tmp_path / "texts", model=enc)
    photos = sorted(_photos(tmp_path / "refs", 12, 9).iterdir())
    build_bank(enc, ["w1 w2"], photos, progress=False).save(c.folder / BANK_FILE)
    c.close()
    c = Collection.open(tmp_path / "texts", model=enc)
    c.add_texts([" ".join(rng.choice(words, 6)) for _ in range(2500)])
    assert c.store.biases("text") is not None and np.ptp(c.store.biases("text")) > 0
    queries = [photos[i] for i in range(5)]
    exact = [[h.score for h in c.search(image=q, kind="text", k=10)] for q in queries]
    c.configure_index("ivfpq")
    assert c.indexes.get("text").kind == "ivfpq" and c.indexes.get("text").dim == 64
    approx = [[h.score for h in c.search(image=q, kind="text", k=10)] for q in queries]
    good = [np.mean(np.array(a) >= e[-1] - 1e-5) for a, e in zip(approx, exact, strict=True)]
    assert np.mean(good) >= 0.9


def test_an_existing_collection_gets_its_biases_on_the_next_index(tmp_path: Path) -> None:
    enc = ColorEncoder(dim=16)
    c = Collection.open(tmp_path / "col", model=enc)
    c.index_folder(_photos(tmp_path / "p", 10, 5), progress=False)
    assert c.store.biases("image") is None  # no bank: plain scores
    plain = [(h.id, h.score) for h in c.search("red", k=5)]
    build_bank(enc, ["red sky", "green"], sorted((tmp_path / "p").iterdir()), progress=False).save(
        c.folder / BANK_FILE)
    c.close()
    c = Collection.open(tmp_path / "col", model=enc)
    assert c.store.biases("image") is None  # until the next index run, still plain
    assert [(h.id, h.score) for h in c.search("red", k=5)] == plain
    c.index_folder(tmp_path / "p", progress=False)
    biases = c.store.biases("image")
    assert biases is not None and np.allclose(biases, c.store.bank.biases("image", c.store.matrix("image")[1]))


def test_rerank_changes_the_order_only_inside_the_top_n() -> None:
    scores = np.array([0.9, 0.8, 0.7, 0.6, 0.5], dtype=np.float32)
    ids = np.array([10, 11, 12, 13, 14])
    fused, order = rerank_top(scores, ids, 3, np.array([0.0, 0.0, 1.0]), 0.5)
    assert order.tolist() == [12, 10, 11, 13, 14]
    assert fused[:3] == pytest.approx([1.2, 0.9, 0.8]) and fused[3:].tolist() == pytest.approx([0.6, 0.5])
    lowered, _ = rerank_top(scores, ids, 3, np.array([-1.0, 0.0, 0.0]), 0.5)  # the top item falls to 0.4
    assert lowered.tolist() == pytest.approx([0.8, 0.7, 0.4, 0.4, 0.4])  # never rising down the list
    same, kept = rerank_top(scores, ids, 3, np.zeros(3), 0.5)
    assert kept.tolist() == ids.tolist() and same == pytest.approx(scores)
    high, dropped = cut(fused, order, 0.85)
    assert dropped.tolist() == [12, 10] and (high >= 0.85).all()


def test_min_score_drops_results_under_it(banked: Collection) -> None:
    everything = banked.search("red sky", k=40)
    threshold = everything[9].score
    kept = banked.search("red sky", k=40, ranking=Ranking(min_score=threshold))
    assert [h.id for h in kept] == [h.id for h in everything if h.score >= threshold]
    assert [h.id for h in banked.search("red sky", k=5, ranking=Ranking(min_score=threshold))] == \
        [h.id for h in kept[:5]]


def test_eval_scores_order_like_search(banked: Collection) -> None:
    """SetScores (eval) and Collection.search (the pipeline) give the same ranking for the same queries."""
    ids, images = banked.store.matrix("image")
    text_ids, texts = banked.store.matrix("text")
    score = SetScores(np.asarray(images), np.asarray(texts), Ranking(), banked.store.bank)
    captions = {it.id: it.text for it in banked.store.select("kind = 'text'")}
    for row, tid in enumerate(text_ids[:5]):
        matrix = score("t2i", np.array([row]), np.arange(len(ids)))[0]
        order = np.lexsort((np.arange(len(ids)), -matrix))[:10]
        assert ids[order].tolist() == [h.id for h in banked.search(captions[int(tid)], k=10)]
    ranks = evaluate_embeddings(np.asarray(images), np.asarray(texts), np.arange(len(texts)) % len(images), score)
    assert ranks.t2i.shape == (len(texts), 1)


def _lite_reranker():
    from crossmodal.encoders import load_encoder
    from crossmodal.search.rerank import find_reranker

    encoder = load_encoder("lite")
    reranker = find_reranker(encoder.fingerprint)
    if reranker is None:
        pytest.skip("no reranker ships for lite")
    return encoder, reranker


@pytest.fixture(scope="module")
def lite_samples(tmp_path_factory: pytest.TempPathFactory) -> Collection:
    """The sample photos and captions in a lite collection (normalisation bank and reranker included)."""
    encoder, _ = _lite_reranker()
    c = Collection.open(tmp_path_factory.mktemp("lite") / "col", model=encoder)
    c.index_folder(SAMPLES / "photos", progress=False)
    c.index_captions(SAMPLES / "captions.tsv", progress=False)
    return c


def test_eval_with_rerank_equals_search_with_rerank(lite_samples: Collection) -> None:
    """Both directions: eval's ranking of a set (SetScores, dataset scorers) and search's (the pipeline over
    the collection, stored photo tokens) agree, reranked top N included (for a photo query, with the caption
    words predicted from the photo), by the dense and the hybrid retriever (its caption-word evidence read from
    the words stored per photo), text queries through one tower or both (``Ranking.both_towers``)."""
    from crossmodal.evaluation.runner import dataset_keywords, embed_dataset
    from crossmodal.search.rerank import dataset_scorers
    from crossmodal.sources.datasets import CaptionDataset

    c, reranker = lite_samples, lite_samples.store.reranker
    ids, images = c.store.matrix("image")
    text_ids, texts = c.store.matrix("text")
    items = c.store.get(text_ids)
    captions = [items[int(i)].text for i in text_ids]
    data = CaptionDataset(name="samples", images=[Path(it.path) for it in c.store.get(ids).values()], texts=captions,
                          text_image=np.zeros(len(captions), dtype=np.int64))
    embedded = embed_dataset(c.encoder, data, progress=False, reranker=reranker)
    words, photo_queries = embedded.photo_words, embedded.query_photos
    assert np.median((photo_queries * images).sum(1)) < 0.999  # photo queries ranking captions: the mirror view
    assert reranker.words is not None and words.shape == (len(ids), len(reranker.words.vocab))
    scorers = dataset_scorers(c.encoder, reranker, data, c.store.tokens(ids), words=words)
    without = dataset_scorers(c.encoder, reranker, data, c.store.tokens(ids))["text"]
    assert not np.allclose(without(3, np.arange(8)), scorers["text"](3, np.arange(8)))  # the words count
    rows = {"image": reranker.words.photo_rows(c.store.photo_words(ids)), "text": c.words.heads.text_rows(captions)}

    def word_scores(direction: str, queries: np.ndarray, items: np.ndarray) -> np.ndarray:
        query_kind, kind = ("image", "text") if direction == "i2t" else ("text", "image")
        return (rows[query_kind][queries] @ rows[kind][items].T).toarray()

    queries = c.encoder.encode_texts(captions)  # the captions as queries; as stored, blended with the tower's
    blended = c.encoder.encode_captions(captions)  # (the int8 tower's scales follow its batches: not to the digit)
    assert (blended * texts).sum(1).min() > 0.998
    assert c.encoder.multilingual is None or np.median((queries * texts).sum(1)) < 0.99
    # both towers: eval's queries are the captions as stored; each encoded alone, as search encodes a query
    alone = np.stack([c.encoder.encode_captions([t])[0] for t in captions])
    for retriever, both_towers in (("dense", False), ("hybrid", False), ("hybrid", True)):
        ranking = Ranking(rerank=8, retriever=retriever, both_towers=both_towers)  # hybrid: caption words per photo
        score = SetScores(np.asarray(images), queries, ranking, c.store.bank,
                          {k: (s, reranker.weight) for k, s in scorers.items()}, keywords=dataset_keywords(data),
                          sparse=word_scores, caption_emb=alone if both_towers else np.asarray(texts),
                          photo_queries=photo_queries)
        for row in (0, 7, 50):
            (expected, order), = score.ranked("t2i", np.array([row]), np.arange(len(ids)), 10)
            hits = c.search(captions[row], k=10, ranking=ranking)
            assert [h.id for h in hits] == ids[order].tolist()
            assert np.allclose([h.score for h in hits], expected, atol=1e-4)
        if both_towers:
            continue  # a photo query is encoded the same either way
        photo = SAMPLES / "photos" / Path(c.store.get([ids[3]])[int(ids[3])].path).name
        (expected, order), = score.ranked("i2t", np.array([3]), np.arange(len(text_ids)), 10)
        hits = c.search(image=photo, kind="text", k=10, ranking=ranking)
        assert [h.id for h in hits] == text_ids[order].tolist()
        assert np.allclose([h.score for h in hits], expected, atol=1e-3)  # the query photo encoded alone


def test_a_photo_query_runs_the_photo_tower_once(lite_samples: Collection, monkeypatch: pytest.MonkeyPatch) -> None:
    """Its vector and the grid the rerank and hybrid stages read come from one model call, searched alone or
    in the server's batches; the answers are those of encoding it twice."""
    from crossmodal.server.batcher import SearchBatcher, SearchJob
    from crossmodal.sources.images import load_image

    c, encoder = lite_samples, lite_samples.encoder
    photo = SAMPLES / "photos" / "1679557684_50a206e4a9.jpg"
    twice = [(h.id, h.score) for h in c.search(image=photo, kind="text", k=5)]
    calls = []

    def counted(name: str):
        call = getattr(encoder, name)
        return lambda *args: calls.append(name) or call(*args)

    for name in ("encode_images", "encode_prepared_grids"):
        monkeypatch.setattr(encoder, name, counted(name))
    once = [(h.id, h.score) for h in c.search(image=photo, kind="text", k=5)]
    assert calls == ["encode_prepared_grids"]
    assert [i for i, _ in once] == [i for i, _ in twice] and np.allclose([s for _, s in once], [s for _, s in twice])
    calls.clear()
    batcher = SearchBatcher(c, max_wait=0.01)
    try:
        served = asyncio.run(batcher.search(SearchJob(images=[(1.0, load_image(photo))], k=5, kind="text")))
    finally:
        batcher.close()
    assert calls == ["encode_prepared_grids"] and [h.id for h in served] == [i for i, _ in twice]


def test_both_towers_encodes_an_english_query_as_captions_are_stored(lite_samples: Collection) -> None:
    """``Ranking.both_towers``: an English text query ranks by its vector as a stored caption's (both towers,
    blended), a German one by the tower's alone as without it; in search, in a file of queries and in the
    server's batches, where requests that ask for it and requests that do not are answered each as alone."""
    from crossmodal.search.query import text_queries
    from crossmodal.server.batcher import SearchBatcher, SearchJob

    c = lite_samples
    if c.encoder.multilingual is None:
        pytest.skip("lite ships no multilingual tower here")
    english, german = "a black dog running across green grass", "ein schwarzer Hund rennt über grünes Gras"
    dense, both = Ranking(rerank=0, retriever="dense"), Ranking(rerank=0, retriever="dense", both_towers=True)

    def ranked(hits) -> list[tuple[int, float]]:
        return [(h.id, round(h.score, 4)) for h in hits]

    blended = c.encoder.encode_captions([english])[0]
    assert ranked(c.search(english, ranking=both)) == ranked(c.search_vector(blended, modality="text", ranking=dense))
    assert ranked(c.search(english, ranking=both)) != ranked(c.search(english, ranking=dense))
    assert ranked(c.search(german, ranking=both)) == ranked(c.search(german, ranking=dense))
    from_file = c.search_queries(text_queries(c.encoder, [english, german], both_towers=True), ranking=both)
    assert [ranked(h) for h in from_file] == [ranked(c.search(t, ranking=both)) for t in (english, german)]
    asked = [(english, Ranking()), (english, Ranking(both_towers=True)), (german, Ranking(both_towers=True))]
    batcher = SearchBatcher(c, max_wait=0.05)

    async def many() -> list:
        return await asyncio.gather(*(batcher.search(SearchJob(texts=[(1.0, t)], k=10, ranking=r)) for t, r in asked))

    try:
        served = asyncio.run(many())
    finally:
        batcher.close()
    for (text, ranking), hits in zip(asked, served, strict=True):
        alone = c.search(text, k=10, ranking=ranking)
        assert [h.id for h in hits] == [h.id for h in alone]
        assert np.allclose([h.score for h in hits], [h.score for h in alone], atol=1e-3)


def test_eval_with_both_towers_ranks_as_search_by_every_retriever(lite_samples: Collection) -> None:
    """Eval's pipeline (``pipeline_scores``: the model's own sparse heads and word evidence) orders photos for a
    caption as search does with ``both_towers``, by the dense, sparse and hybrid retrievers: the sparse retriever's
    query words come from the blended vector, as search reads them."""
    from dataclasses import replace

    from crossmodal.evaluation.runner import embed_dataset, pipeline_scores
    from crossmodal.search.sparse import find_sparse
    from crossmodal.sources.datasets import CaptionDataset

    c = lite_samples
    if c.encoder.multilingual is None or find_sparse(c.encoder.fingerprint) is None:
        pytest.skip("lite ships no multilingual tower or sparse heads here")
    ids, _ = c.store.matrix("image")
    captions = ["a black dog running across green grass", "children playing in the water", "a man on a motorbike"]
    data = CaptionDataset(name="samples", images=[Path(it.path) for it in c.store.get(ids).values()], texts=captions,
                          text_image=np.zeros(len(captions), dtype=np.int64))
    alone = np.stack([c.encoder.encode_captions([t])[0] for t in captions])  # as search encodes each query
    emb = replace(embed_dataset(c.encoder, data, progress=False, reranker=c.store.reranker), captions=alone)
    for retriever in ("dense", "sparse", "hybrid"):
        ranking = Ranking(rerank=0, retriever=retriever, both_towers=True)
        score = pipeline_scores(c.encoder, emb, ranking, c.store.bank, c.store.reranker)
        for row, text in enumerate(captions):
            (expected, order), = score.ranked("t2i", np.array([row]), np.arange(len(ids)), 10)
            hits = c.search(text, k=10, ranking=ranking)
            assert [h.id for h in hits] == ids[order].tolist(), (retriever, text)
            assert np.allclose([h.score for h in hits], expected, atol=1e-4)


def test_rerank_reorders_only_the_top_n(lite_samples: Collection) -> None:
    query = "a dog jumps into a swimming pool"
    plain = [h.id for h in lite_samples.search(query, k=20, ranking=Ranking(rerank=0))]
    for n in (4, 8):
        reranked = [h.id for h in lite_samples.search(query, k=20, ranking=Ranking(rerank=n))]
        assert set(reranked[:n]) == set(plain[:n]) and reranked[n:] == plain[n:]


def test_photos_indexed_before_the_reranker_get_tokens_on_the_next_index(lite_samples: Collection) -> None:
    c, query = lite_samples, "a dog jumps into a swimming pool"
    reranked = [h.id for h in c.search(query, k=10)]
    with c.store.transaction() as db:
        db.execute("DELETE FROM rerank_tokens")
    assert len(c.store.missing_tokens()) == 35
    assert [h.id for h in c.search(query, k=10)] == [h.id for h in c.search(query, k=10, ranking=Ranking(rerank=0))]
    c.index_folder(SAMPLES / "photos", progress=False)  # nothing changed on disk: only the tokens are added
    assert c.store.missing_tokens() == [] and [h.id for h in c.search(query, k=10)] == reranked


def test_query_modality_says_what_normalisation_and_reranking_apply_to() -> None:
    from crossmodal.search.pipeline import cross_modal
    from crossmodal.search.query import modality_of

    assert modality_of([(1.0, False)], ["a dog"]) == ("text", "a dog")
    assert modality_of([(1.0, True)], ["photo"]) == ("image", "photo")
    assert modality_of([(1.0, False), (0.5, False)], ["a", "b"]) == ("text", None)  # normalised, not reranked
    assert modality_of([(1.0, False), (-1.0, False)], ["a", "b"]) == ("mixed", None)
    assert modality_of([(1.0, False), (1.0, True)], ["a", "photo"]) == ("mixed", None)
    assert cross_modal("text", "image") and cross_modal("image", "text")
    assert not cross_modal("image", "image") and not cross_modal("mixed", "image")
