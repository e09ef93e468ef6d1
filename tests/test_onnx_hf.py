"""ONNX export of transformers dual encoders: tiny random models exported, run with ONNX Runtime at batch sizes
and token lengths other than the export example's, and compared with the PyTorch encoder."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image
from test_hf_encoders import _build, _tokenizer

from crossmodal.encoders import load_encoder
from crossmodal.encoders.hf import HFDualEncoder
from crossmodal.encoders.onnx import OnnxEncoder
from crossmodal.encoders.onnx_export import export_onnx

pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")

# 1 and 4 texts of different lengths, one longer than the tiny models' position tables (truncated).
TEXT_BATCHES = [["a dog"], ["a black dog runs through the grass", "x", "two people in a fountain", "a man " * 100]]


def _save(family: str, folder: Path) -> HFDualEncoder:
    """The tiny model of test_hf_encoders cut to one layer per transformer tower (ALIGN's EfficientNet to its
    first two stages, the second as wide as its last, which sets the image vector's size): export time grows
    with the number of traced ops."""
    torch.manual_seed(0)
    model, processor = _build(family)
    text, vision = model.config.text_config, model.config.vision_config
    text.num_hidden_layers = 1
    if family == "align":
        width = vision.out_channels[-1]
        for key in ("in_channels", "out_channels", "strides", "kernel_sizes", "expand_ratios", "num_block_repeats"):
            setattr(vision, key, getattr(vision, key)[:2])
        vision.out_channels = [vision.out_channels[0], width]
    else:
        vision.num_hidden_layers = 1
    model = type(model)(model.config)
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    _tokenizer().save_pretrained(folder)
    encoder = load_encoder(str(folder))
    assert isinstance(encoder, HFDualEncoder)
    return encoder


def _photos(n: int) -> list[Image.Image]:
    rng = np.random.default_rng(n)
    return [Image.fromarray(rng.integers(0, 255, (40 + 8 * i, 48 + 4 * i, 3), dtype=np.uint8)) for i in range(n)]


@pytest.fixture(scope="module", params=["clip", "siglip", "siglip2", "altclip", "chinese_clip", "align"])
def exported(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> tuple[Any, ...]:
    folder = tmp_path_factory.mktemp(request.param)
    encoder = _save(request.param, folder / "model")
    return request.param, encoder, export_onnx(encoder, folder / "onnx")


def test_export_agrees_with_pytorch_at_other_batch_sizes(exported: tuple[Any, ...]) -> None:
    family, encoder, folder = exported
    onnx = load_encoder(str(folder))  # the same path as `--model FOLDER` everywhere
    assert isinstance(onnx, OnnxEncoder) and onnx.fingerprint == encoder.fingerprint and onnx.dim == encoder.dim
    image, text = onnx.image_session, onnx.text_session
    assert [o.name for o in image.get_outputs()] == [o.name for o in text.get_outputs()] == ["embedding"]
    assert isinstance(image.get_inputs()[0].shape[0], str)  # symbolic batch
    fixed = onnx.config["text"]["kwargs"].get("padding") == "max_length"
    assert all(isinstance(i.shape[1], int) == fixed for i in text.get_inputs()), family  # symbolic tokens
    for n in (1, 5):
        photos = _photos(n)
        assert (onnx.encode_images(photos) * encoder.encode_images(photos)).sum(1).min() >= 0.999, (family, n)
    for texts in TEXT_BATCHES:
        assert (onnx.encode_texts(texts) * encoder.encode_texts(texts)).sum(1).min() >= 0.999, (family, len(texts))
