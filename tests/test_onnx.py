"""ONNX Runtime backend: exported towers agree with PyTorch, keep (fp32) or change (int8) the model
identity, and load through the same `--model` path as every other backend."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from conftest import SAMPLES
from crossmodal import Collection
from crossmodal.cli import app
from crossmodal.collection.manifest import ModelMismatchError
from crossmodal.encoders import load_encoder
from crossmodal.encoders.onnx import OnnxEncoder, export_onnx
from crossmodal.sources.images import load_image

pytest.importorskip("onnxruntime")
CAPTIONS = ["a black dog runs through the grass", "children play in a fountain", "x", "a man " * 60]


@pytest.fixture(scope="module")
def photos() -> list:
    return [load_image(p) for p in sorted((SAMPLES / "photos").glob("*.jpg"))[:6]]


@pytest.fixture(scope="module")
def lite_onnx(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("onnx") / "lite"
    result = CliRunner().invoke(app, ["export", "--out", str(out)])
    assert result.exit_code == 0, result.output
    return out


def test_lite_export_agrees_with_pytorch(lite_onnx: Path, photos: list) -> None:
    lite, onnx = load_encoder("lite"), load_encoder(str(lite_onnx))
    assert isinstance(onnx, OnnxEncoder) and onnx.fingerprint == lite.fingerprint and onnx.dim == lite.dim
    assert (lite.encode_images(photos) * onnx.encode_images(photos)).sum(1).min() >= 0.999
    assert (lite.encode_texts(CAPTIONS) * onnx.encode_texts(CAPTIONS)).sum(1).min() >= 0.999


def test_a_lite_collection_answers_onnx_queries_the_same(lite_onnx: Path, tmp_path: Path) -> None:
    with Collection.open(tmp_path / "col") as c:
        c.index_folder(SAMPLES / "photos", progress=False)
        expected = [h.id for h in c.search("a dog on the grass", k=5)]
    with Collection.open(tmp_path / "col", model=str(lite_onnx)) as c:
        assert [h.id for h in c.search("a dog on the grass", k=5)] == expected


def test_int8_export_is_a_model_of_its_own(tmp_path: Path, photos: list) -> None:
    lite = load_encoder("lite")
    int8 = OnnxEncoder(export_onnx(lite, tmp_path / "int8", int8=True))
    assert int8.fingerprint == lite.fingerprint + "-int8"
    assert (tmp_path / "int8" / "text.onnx").stat().st_size < 0.4 * 90e6  # MiniLM weights now int8
    # naive dynamic int8 drifts (a one-word text most); its retrieval cost is measured in benchmarks, not here
    assert (lite.encode_texts(CAPTIONS[:3]) * int8.encode_texts(CAPTIONS[:3])).sum(1).min() >= 0.85
    with Collection.open(tmp_path / "col", model=lite) as c:
        c.add_texts(["a caption"])
    with pytest.raises(ModelMismatchError):
        Collection.open(tmp_path / "col", model=int8)


def test_transformers_export_is_refused_clearly(tmp_path: Path) -> None:
    from test_hf_encoders import _build, _tokenizer

    torch.manual_seed(0)
    model, processor = _build("clip")
    model.save_pretrained(tmp_path / "clip")
    processor.save_pretrained(tmp_path / "clip")
    _tokenizer().save_pretrained(tmp_path / "clip")
    with pytest.raises(ValueError, match="not supported yet"):
        export_onnx(load_encoder(str(tmp_path / "clip")), tmp_path / "clip-onnx")
