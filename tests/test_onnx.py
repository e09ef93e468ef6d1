"""ONNX Runtime backend: exported towers agree with PyTorch, keep (fp32) or change (int8) the model
identity, run lite by default on the CPU, and load through the same `--model` path as every backend."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import ImageOps
from typer.testing import CliRunner

from conftest import SAMPLES
from crossmodal import Collection
from crossmodal.cli import app
from crossmodal.collection.manifest import ModelMismatchError
from crossmodal.encoders import load_encoder
from crossmodal.encoders.base import normalize
from crossmodal.encoders.lite import WEIGHTS
from crossmodal.encoders.onnx import OnnxEncoder, length_groups
from crossmodal.encoders.onnx_cache import cache_folder, cached_lite_onnx
from crossmodal.encoders.onnx_export import export_onnx
from crossmodal.search.pipeline import Ranking
from crossmodal.sources.images import load_image

onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")
CAPTIONS = ["a black dog runs through the grass", "children play in a fountain", "x", "a man " * 60]


@pytest.fixture(scope="module")
def photos() -> list:
    return [load_image(p) for p in sorted((SAMPLES / "photos").glob("*.jpg"))[:6]]


@pytest.fixture(scope="module")
def torch_lite():
    """lite's own towers on PyTorch (the multilingual query tower, which no backend changes, left out)."""
    return load_encoder("lite", backend="torch", multilingual=False)


@pytest.fixture(scope="module")
def lite_onnx(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("onnx") / "lite"
    result = CliRunner().invoke(app, ["export", "--out", str(out)])
    assert result.exit_code == 0, result.output
    return out


def _min_cosine(a: np.ndarray, b: np.ndarray) -> float:
    return float((a * b).sum(1).min())


def test_lite_export_agrees_with_pytorch(lite_onnx: Path, torch_lite, photos: list) -> None:
    exported = load_encoder(str(lite_onnx), multilingual=False)
    assert isinstance(exported, OnnxEncoder)
    assert exported.fingerprint == torch_lite.fingerprint and exported.dim == torch_lite.dim
    for batch in (photos[:1], photos):  # batch sizes other than the export example's
        assert _min_cosine(torch_lite.encode_images(batch), exported.encode_images(batch)) >= 0.9999
    assert _min_cosine(torch_lite.encode_texts(CAPTIONS), exported.encode_texts(CAPTIONS)) >= 0.9999


def test_a_mirror_model_reads_each_photo_and_its_mirror_image(photos: list, tmp_path: Path) -> None:
    """``lite+mirror``: the same model (fingerprint, so bank and reranker) whose photo vectors are the mean of the
    photo's and its mirror image's; the reranker's grid stays the photo's own; a collection made with it keeps it."""
    plain, mirror = load_encoder("lite", multilingual=False), load_encoder("lite+mirror", multilingual=False)
    assert mirror.fingerprint == plain.fingerprint and mirror.name == "lite+mirror" and not plain.mirror
    expected = normalize(plain.encode_images(photos) + plain.encode_images([ImageOps.mirror(p) for p in photos]))
    assert _min_cosine(mirror.encode_images(photos), expected) >= 0.9999
    assert _min_cosine(plain.encode_images(photos), expected) < 0.999  # a second view changes every vector
    vectors, grid = mirror.encode_prepared_grids([mirror.prepare_image(p) for p in photos])
    assert _min_cosine(vectors, expected) >= 0.9999
    np.testing.assert_allclose(grid, plain.encode_prepared_grids([plain.prepare_image(p) for p in photos])[1])
    folder = tmp_path / "photos"
    folder.mkdir()
    for path in sorted((SAMPLES / "photos").glob("*.jpg"))[:len(photos)]:
        shutil.copy(path, folder / path.name)
    with Collection.open(tmp_path / "c", model="lite+mirror") as c:
        c.index_folder(folder, progress=False)
    with Collection.open(tmp_path / "c") as c:  # reopened by the name its manifest records
        assert c.manifest.model == "lite+mirror" and c.encoder.mirror
        ids, stored = c.store.matrix("image")
        by_name = {Path(it.path).name: i for i, it in c.store.get(ids).items()}
        order = [list(ids).index(by_name[p.name]) for p in sorted(folder.glob("*.jpg"))]
        assert _min_cosine(stored[order], expected) >= 0.999
        first = sorted(folder.glob("*.jpg"))[0]  # a photo query is read both ways too
        hits = c.search(image=first, k=3, ranking=Ranking(norm=False, rerank=0, retriever="dense"))
        names = [p.name for p in sorted(folder.glob("*.jpg"))]
        assert hits and all(abs(h.score - float(expected[0] @ expected[names.index(Path(h.path).name)])) < 1e-3
                            for h in hits)
    with pytest.raises(ModelMismatchError, match="two readings"):  # new photos would be read the other way
        Collection.open(tmp_path / "c", model="lite")


def test_a_photo_query_ranking_captions_reads_its_mirror_image_too(photos: list, tmp_path: Path) -> None:
    """A photo query ranking captions is the mean of the photo's and its mirror image's unit vectors (nothing
    stored changes); ranking photos it reads the photo once, so a stored photo still finds itself at 1.0."""
    folder = tmp_path / "photos"
    folder.mkdir()
    for path in sorted((SAMPLES / "photos").glob("*.jpg"))[:4]:
        shutil.copy(path, folder / path.name)
    first = sorted(folder.glob("*.jpg"))[0]
    dense = Ranking(norm=False, rerank=0, retriever="dense")
    with Collection.open(tmp_path / "c", model="lite") as c:
        c.index_folder(folder, progress=False)
        c.add_texts(["a dog runs on the grass", "two children play in the snow", "a man rides a bike",
                     "a black dog and a white dog", "people on a beach"])
        image = load_image(first)
        plain = c.encoder.encode_images([image])[0]
        both = normalize(plain + c.encoder.encode_images([ImageOps.mirror(image)])[0])
        assert float(plain @ both) < 0.999  # the mirror view is another vector
        captions = c.search(image=first, kind="text", k=5, ranking=dense)
        assert len(captions) == 5
        assert all(abs(h.score - float(c.store.vector(h.id) @ both)) < 1e-3 for h in captions)
        itself = c.search(image=first, k=1, exclude_query_image=False, ranking=dense)
        assert Path(itself[0].path).name == first.name and itself[0].score > 0.9999
    mirror = load_encoder("lite+mirror", multilingual=False)  # already the mirror view: read no third time
    vectors = mirror.encode_prepared([mirror.prepare_image(p) for p in photos])
    assert mirror.caption_query_photos(vectors, []) is vectors


def test_same_padding_is_folded_into_the_convolutions(lite_onnx: Path) -> None:
    graph = onnx.load(str(lite_onnx / "image.onnx")).graph
    ops = [node.op_type for node in graph.node]
    assert "Pad" not in ops and ops.count("Conv") == 49
    strided = [n for n in graph.node if n.op_type == "Conv" and any(a.name == "strides" and a.ints[0] == 2
                                                                   for a in n.attribute)]
    pads = [next(list(a.ints) for a in n.attribute if a.name == "pads") for n in strided]
    assert any(p[:2] != p[2:] for p in pads)  # TF "same": more padding after than before


def test_lite_runs_on_onnx_runtime_by_default(torch_lite, photos: list, monkeypatch: pytest.MonkeyPatch,
                                              tmp_path: Path) -> None:
    monkeypatch.setenv("CROSSMODAL_CACHE", str(tmp_path))
    monkeypatch.delenv("CROSSMODAL_BACKEND", raising=False)
    from crossmodal.encoders import _load

    _load.cache_clear()
    auto = load_encoder("lite")
    assert isinstance(auto, OnnxEncoder) and auto.name == "lite" and auto.fingerprint == torch_lite.fingerprint
    folder = cache_folder(WEIGHTS)
    assert folder.parent.parent == tmp_path and (folder / "image.onnx").is_file()
    assert _min_cosine(torch_lite.encode_images(photos), auto.encode_images(photos)) >= 0.9999
    written = (folder / "image.onnx").stat().st_mtime_ns
    assert cached_lite_onnx(WEIGHTS) is not None  # a second load reuses the export
    assert (folder / "image.onnx").stat().st_mtime_ns == written
    assert not isinstance(load_encoder("lite", backend="torch"), OnnxEncoder)
    with pytest.raises(ValueError, match="unknown backend"):
        load_encoder("lite", backend="tensorflow")
    _load.cache_clear()


def test_a_lite_collection_answers_onnx_queries_the_same(lite_onnx: Path, torch_lite, tmp_path: Path) -> None:
    with Collection.open(tmp_path / "col", model=torch_lite) as c:
        c.index_folder(SAMPLES / "photos", progress=False)
        expected = [h.id for h in c.search("a dog on the grass", k=5)]
    with Collection.open(tmp_path / "col", model=str(lite_onnx)) as c:
        assert [h.id for h in c.search("a dog on the grass", k=5)] == expected


def test_int8_text_tower_answers_queries_on_a_float32_collection(tmp_path: Path, torch_lite, photos: list) -> None:
    int8 = OnnxEncoder(export_onnx(torch_lite, tmp_path / "int8", int8=True))
    text = onnx.load(str(tmp_path / "int8" / "text.onnx")).graph
    text_ops = [node.op_type for node in text.node]
    # 5 of the 6 weight matrices of each of the first 3 layers, all 6 of the last 3, and the head
    assert text_ops.count("MatMulInteger") == 34
    # the layers' inputs smoothed first: one for the attention's 3 products, one each for the other 3
    assert sum(n.op_type == "Mul" and n.name.endswith("/smoothed") for n in text.node) == 4 * 6
    # per-channel 7-bit weights stay close (naive per-tensor int8 fell to cosine 0.64 on real captions)
    assert _min_cosine(torch_lite.encode_texts(CAPTIONS), int8.encode_texts(CAPTIONS)) >= 0.95
    assert _min_cosine(torch_lite.encode_images(photos), int8.encode_images(photos)) >= 0.9999  # photos: fp32
    assert int8.fingerprint == torch_lite.fingerprint
    query, plain = "a black dog running through the grass", Ranking(norm=False, rerank=0)
    with Collection.open(tmp_path / "col", model=torch_lite) as c:
        c.index_folder(SAMPLES / "photos", progress=False)
        expected = {h.id: h.score for h in c.search(query, k=5, ranking=plain)}
        default = {h.id for h in c.search(query, k=3)}
    with Collection.open(tmp_path / "col", model=int8) as c:
        got = c.search(query, k=3, ranking=plain)
        # the same photos with nearly the same scores; below the first two (scores under 0.13, none of them a dog),
        # photos 0.01 apart may swap
        assert [h.id for h in got[:2]] == list(expected)[:2]
        assert all(abs(h.score - expected[h.id]) < 0.01 for h in got)
        # the default pipeline: normalised and reranked (on the int8 tower's token states): near-ties may swap
        assert len({h.id for h in c.search(query, k=3)} & default) >= 2


def test_indexing_pipeline_survives_a_corrupt_photo_mid_batch(tmp_path: Path, photos: list) -> None:
    encoder = load_encoder("lite", backend="onnx")
    folder = tmp_path / "photos"
    folder.mkdir()
    sources = sorted((SAMPLES / "photos").glob("*.jpg"))[:9]
    for i, src in enumerate(sources):
        (folder / f"{i:02d}.jpg").write_bytes(src.read_bytes())
        if i == 4:  # sorts into the middle of the first batch
            (folder / "04b.jpg").write_bytes(src.read_bytes()[:300] + b"\x00garbage" * 40)
    lines: list[str] = []
    with Collection.open(tmp_path / "col", model=encoder) as c:
        report = c.index_folder(folder, progress=False, batch_size=4, report=lines.append)
        assert report.added == 9 and [p for p, _ in report.failed] == [str(folder / "04b.jpg")]
        assert len(lines) == 1 and "04b.jpg" in lines[0]
        ids, matrix = c.store.matrix("image")
        stored = {c.store.get([i])[i].path: v for i, v in zip(ids.tolist(), matrix, strict=True)}
    direct = encoder.encode_images([load_image(p) for p in sources])
    for i, vector in enumerate(direct):  # every photo got its own vector, in order, despite the bad one
        assert float(vector @ stored[str(folder / f"{i:02d}.jpg")]) >= 0.9999


def test_length_groups_bound_padding() -> None:
    lengths = np.array([5, 6, 7, 8, 9, 12, 13, 20, 21, 40])
    groups = length_groups(lengths)
    assert [lengths[g].tolist() for g in groups] == [[5, 6, 7], [8, 9], [12, 13], [20, 21], [40]]
    assert length_groups(np.array([], dtype=int)) == []


def test_server_encodes_queries_with_the_int8_text_tower(tmp_path: Path, torch_lite,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    from fastapi.testclient import TestClient

    from crossmodal.server.app import create_app

    monkeypatch.setenv("CROSSMODAL_CACHE", str(tmp_path / "cache"))
    with Collection.open(tmp_path / "col", model=torch_lite) as c:
        c.index_folder(SAMPLES / "photos", progress=False)
    # what the int8 tower ranks (its third photo is not float32's: two unrelated photos 0.01 apart swap)
    with Collection.open(tmp_path / "col", model=load_encoder("lite", int8_text=True, multilingual=False)) as c:
        expected = [h.id for h in c.search("a black dog running through the grass", k=3,
                                           ranking=Ranking(norm=False, rerank=0))]
    app = create_app(tmp_path / "col", int8_queries=True)
    with TestClient(app) as client:
        r = client.post("/api/search", json={"text": "a black dog running through the grass", "k": 3, "norm": False,
                                             "rerank": 0})
        assert r.status_code == 200 and [hit["id"] for hit in r.json()["results"]] == expected
    assert (cache_folder(WEIGHTS, int8_text=True) / "crossmodal-onnx.json").is_file()
    assert OnnxEncoder(cache_folder(WEIGHTS, int8_text=True)).config["int8"] is True


def test_an_export_without_reranker_inputs_indexes_and_searches_unreranked(lite_onnx: Path, tmp_path: Path) -> None:
    """An ONNX export from before the reranker (no grid or token-state outputs) still serves a lite collection:
    photos get no reranker tokens, queries are normalised but not reranked, nothing fails."""
    old = tmp_path / "old-export"
    shutil.copytree(lite_onnx, old)
    config = json.loads((old / "crossmodal-onnx.json").read_text())
    del config["rerank_inputs"]
    (old / "crossmodal-onnx.json").write_text(json.dumps(config))
    encoder = OnnxEncoder(old)
    assert not encoder.rerank_inputs and OnnxEncoder(lite_onnx).rerank_inputs
    with Collection.open(tmp_path / "col", model=encoder) as c:
        assert c.store.reranker is not None and c.reranker("image") is None
        c.index_folder(SAMPLES / "photos", progress=False)
        assert len(c.store.missing_tokens()) == 35
        query = "a dog jumps into a swimming pool"
        assert [h.id for h in c.search(query, k=5)] == [h.id for h in c.search(query, k=5, ranking=Ranking(rerank=0))]
    vectors, states = OnnxEncoder(lite_onnx).encode_texts_with_states(["a dog", "two people on a beach"])
    expected, mask = OnnxEncoder(lite_onnx).token_states(["a dog", "two people on a beach"])
    assert np.allclose(vectors, OnnxEncoder(lite_onnx).encode_texts(["a dog", "two people on a beach"]), atol=1e-5)
    for (s, m), full, row in zip(states, expected, mask, strict=True):
        assert m.shape[1] == row.sum() and np.allclose(s[0], full[: row.sum()], atol=1e-4)


def test_sessions_keep_residual_adds_and_layer_norms_apart(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """ONNX Runtime fuses lite's text tower's adds and layer norms into SkipLayerNormalization when it opens the graph
    unless told not to; that kernel is the slower one here (benchmarks/skip_layer_norm.py)."""
    import onnxruntime as ort

    from crossmodal.encoders.onnx import _session

    graph = load_encoder("lite", int8_text=True).folder / "text.onnx"

    def optimized_ops(open_session) -> list[str]:
        saved = tmp_path / f"optimized-{len(list(tmp_path.iterdir()))}.onnx"

        class Saving(ort.SessionOptions):  # what ONNX Runtime runs, written out
            def __init__(self) -> None:
                super().__init__()
                self.optimized_model_filepath = str(saved)

        with monkeypatch.context() as m:
            m.setattr(ort, "SessionOptions", Saving)
            open_session()
        return [n.op_type for n in onnx.load(str(saved)).graph.node]

    assert "SkipLayerNormalization" in optimized_ops(lambda: ort.InferenceSession(str(graph), ort.SessionOptions()))
    ops = optimized_ops(lambda: _session(graph, 1))
    assert "SkipLayerNormalization" not in ops and "LayerNormalization" in ops
