"""Caption words predicted from a photo (rerank/words.py): the evidence, its fusion, and its training."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from crossmodal.rerank.words import WordModel, lite_tokenizer, with_words
from crossmodal.training.train_words import train_words


def _ids(*words: str) -> list[int]:
    tokenize, _ = lite_tokenizer()
    return [ids[1] for ids in tokenize(list(words))]  # [CLS] word [SEP]


def _model(logits: np.ndarray) -> WordModel:
    """Three words (dog, beach, red) whose logits are the bias (a weight of zeros): P(word) = sigmoid(logit)."""
    return WordModel(vocab=np.array(_ids("dog", "beach", "red")), idf=np.array([1.0, 2.0, 4.0], np.float32),
                     weight=np.zeros((2, 3), np.float32), bias=logits.astype(np.float32),
                     mean=np.zeros(2, np.float32), scale=np.ones(2, np.float32), share=0.1)


def test_evidence_is_the_idf_weighted_sum_of_the_caption_words_probabilities() -> None:
    model = _model(np.array([0.0, np.log(3.0), -np.log(3.0)]))
    p = model.photo_words(np.zeros((1, 2)))[0]
    assert np.allclose(p, [0.5, 0.75, 0.25])
    texts = ["A dog runs on the beach", "a red dog , a red dog", "Ein Hund rennt am Strand", ""]
    assert np.allclose(model.evidence(p, texts), [1.0 * 0.5 + 2.0 * 0.75, 4.0 * 0.25 + 1.0 * 0.5, 0.0, 0.0])


def test_a_photos_stored_words_and_a_captions_words_give_the_evidence_as_a_sparse_product() -> None:
    model = _model(np.array([0.0, np.log(3.0), -np.log(3.0)]))
    model.top = 2
    p = model.photo_words(np.zeros((1, 2)))
    records = model.records(p)
    assert records["word"].tolist() == [[1, 0]] and np.allclose(records["p"].astype(np.float32), [[0.75, 0.5]])
    rows = model.photo_rows([records[0], None])  # a photo stored before the classifier has an empty row
    assert rows.shape == (2, 3) and rows[1].nnz == 0
    texts = ["A dog runs on the beach", "a red dog , a red dog", "Ein Hund rennt am Strand"]
    captions = model.text_rows(texts)
    assert np.allclose(captions.toarray(), [[1.0, 2.0, 0.0], [1.0, 0.0, 4.0], [0.0, 0.0, 0.0]])  # idf, once
    kept = np.where(np.arange(3) < 2, p[0], 0.0)  # the unlikeliest word (red) is not kept
    assert np.allclose((rows[0] @ captions.T).toarray()[0], model.evidence(kept, texts), atol=1e-3)


def test_the_evidence_is_folded_into_the_reranker_logits() -> None:
    dual, logits, evidence = np.array([0.30, 0.28, 0.25]), np.array([1.0, 2.0, -1.0]), np.array([2.0, 0.0, 4.0])
    weight, share = 0.01, 0.1
    fused = dual + weight * with_words(logits, evidence, share, weight)
    assert np.allclose(fused, dual + weight * logits + share * evidence / 4.0)
    assert np.array_equal(with_words(logits, np.zeros(3), share, weight), logits)  # no word matched: unchanged


def test_training_lowers_the_loss_and_learns_each_photos_words(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    words = ["dog", "beach", "red", "bike", "snow", "girl"]
    n = 120
    features = rng.normal(size=(n, 16)).astype(np.float32)
    has = features[:, :len(words)] > 0  # photo i shows word w when feature w is positive
    texts, owner = [], []
    for i in range(n):
        shown = [w for w, on in zip(words, has[i], strict=True) if on] or ["man"]
        for _ in range(3):  # three captions per photo, so each word is seen often enough for the vocabulary
            texts.append("a " + " and a ".join(shown))
            owner.append(i)
    model, history = train_words(features, texts, np.array(owner), share=0.2, epochs=300, lr=3e-2)
    assert history[-1] < 0.5 * history[0]
    assert model.share == 0.2 and set(_ids(*words)) <= set(model.vocab.tolist())
    column = {int(v): j for j, v in enumerate(model.vocab)}
    probs = model.photo_words(features)[:, [column[i] for i in _ids(*words)]]
    assert ((probs > 0.5) == has[:, :len(words)]).mean() > 0.95
    model.save(tmp_path / "words.npz")
    again = WordModel.load(tmp_path / "words.npz")
    assert again.share == pytest.approx(0.2) and np.allclose(again.photo_words(features)[:, 0],
                                                               model.photo_words(features)[:, 0], atol=1e-2)


def test_no_frequent_caption_word_means_no_classifier() -> None:
    features = np.zeros((2, 4), np.float32)
    with pytest.raises(ValueError, match="no caption word is frequent enough"):
        train_words(features, ["a zebra", "the quokka"], np.array([0, 1]), share=0.1)
