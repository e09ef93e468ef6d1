"""Recall metrics on hand-made score matrices, and against a plain CLIP_benchmark-style reference."""

from __future__ import annotations

import numpy as np
import pytest

from crossmodal.evaluation.metrics import first_positive_rank, recall_at, recall_metrics, retrieval_ranks


def test_first_positive_rank_by_hand() -> None:
    scores = np.array([[0.9, 0.1, 0.5, 0.7],
                       [0.2, 0.2, 0.2, 0.9],
                       [0.3, 0.4, 0.1, 0.0]])
    positive = np.array([[False, False, True, True],   # best positive 0.7 -> rank 1
                         [False, True, False, False],  # tie 0.2 with index 0 ranked first -> rank 2
                         [False, False, False, False]])  # no positive
    assert first_positive_rank(scores, positive).tolist() == [1, 2, -1]


def test_recall_with_several_captions_per_image() -> None:
    # 2 images, 4 captions: captions 0,1 -> image 0; captions 2,3 -> image 1
    image = np.array([[1.0, 0.0], [0.0, 1.0]], dtype=np.float32)
    text = np.array([[0.0, 1.0], [1.0, 0.0], [0.0, 1.0], [0.6, 0.8]], dtype=np.float32)
    owner = np.array([0, 0, 1, 1])
    i2t, t2i = retrieval_ranks(image, text, owner)
    # image 0 scores texts [0, 1, 0, .6]: its caption 1 is first -> rank 0
    # image 1 scores texts [1, 0, 1, .8]: caption 0 (wrong) ties caption 2 at 1.0, lower index first -> rank 1
    assert i2t[:, 0].tolist() == [0, 1]
    # image 0: caption 0 (score 0) is behind captions 1 and 3, ahead of its tie caption 2 -> rank 2
    assert i2t.tolist() == [[0, 2], [1, 2]]  # every positive's rank, sorted
    # caption 0 prefers image 1 -> rank 1; caption 1 -> 0; caption 2 -> 0; caption 3 -> 0
    assert t2i[:, 0].tolist() == [1, 0, 0, 0]
    m = recall_metrics(image, text, owner)
    assert m["i2t_R@1"] == 50.0 and m["t2i_R@1"] == 75.0 and m["i2t_R@5"] == 100.0
    assert m["rsum"] == pytest.approx(50 + 100 + 100 + 75 + 100 + 100)


def test_queries_without_positive_are_left_out() -> None:
    assert recall_at(np.array([0, -1, 3]), 1) == 50.0


def _clip_benchmark_recall(image: np.ndarray, text: np.ndarray, owner: np.ndarray, k: int) -> tuple[float, float]:
    """The CLIP_benchmark definition, written out plainly with a full sort."""
    scores = text @ image.T  # (texts, images)
    positive = owner[:, None] == np.arange(len(image))[None, :]
    topk_t2i = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    t2i = np.mean([positive[j, topk_t2i[j]].any() for j in range(len(text))]) * 100
    topk_i2t = np.argsort(-scores.T, axis=1, kind="stable")[:, :k]
    i2t = np.mean([positive.T[i, topk_i2t[i]].any() for i in range(len(image))]) * 100
    return i2t, t2i


@pytest.mark.parametrize(("n_images", "per_image", "dim"), [(7, 1, 4), (50, 5, 16), (300, 3, 8)])
def test_matches_reference_on_random_embeddings(n_images: int, per_image: int, dim: int,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    import crossmodal.evaluation.metrics as metrics

    monkeypatch.setattr(metrics, "BLOCK", 64)  # exercise the blocked path
    rng = np.random.default_rng(n_images)
    image = rng.normal(size=(n_images, dim)).astype(np.float32)
    owner = np.repeat(np.arange(n_images), per_image)
    text = (image[owner] + rng.normal(scale=1.5, size=(len(owner), dim))).astype(np.float32)
    got = recall_metrics(image, text, owner)
    for k in (1, 5, 10):
        i2t, t2i = _clip_benchmark_recall(image, text, owner, k)
        assert got[f"i2t_R@{k}"] == pytest.approx(i2t) and got[f"t2i_R@{k}"] == pytest.approx(t2i)
