"""ONNX Runtime backend: an encoder exported to two ONNX graphs (photo tower, text tower); for now
the default model ``lite`` (transformers models stay on PyTorch, see ``export_onnx``).

``export_onnx(encoder, folder)`` writes ``image.onnx``, ``text.onnx``, the tokenizer and
``crossmodal-onnx.json``; ``load_encoder(folder)`` then runs them with ONNX Runtime.
One native call per batch (no Python between layers) is what makes it fast on a busy CPU.
A float32 export keeps the source model's fingerprint, since its vectors agree to cosine >= 0.999,
so collections built with the source model accept its queries; an int8 export is a model of its own.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from ..collection.atomic import atomic_write_json
from .base import Encoder

CONFIG = "crossmodal-onnx.json"
TEXT_INPUTS = ("input_ids", "attention_mask", "token_type_ids")


class _LiteImage(torch.nn.Module):
    def __init__(self, encoder: Any) -> None:
        super().__init__()
        self.towers, self.head = encoder.towers, encoder.heads.image

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.head(self.towers.image_features(pixels))


class _LiteText(torch.nn.Module):
    def __init__(self, encoder: Any) -> None:
        super().__init__()
        self.towers, self.head = encoder.towers, encoder.heads.text

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                token_type_ids: torch.Tensor) -> torch.Tensor:
        tokens = {"input_ids": input_ids, "attention_mask": attention_mask, "token_type_ids": token_type_ids}
        return self.head(self.towers.text_features(tokens))


def export_onnx(encoder: Encoder, folder: str | Path, int8: bool = False) -> Path:
    """Export a ``lite`` encoder (the default model or a trained heads file) to ONNX in ``folder``."""
    from .hf import HFDualEncoder
    from .lite import TEXT_MAX_TOKENS, LiteEncoder

    if isinstance(encoder, HFDualEncoder):
        # The TorchScript-based exporter traces CLIP's end-of-text pooling with the example's batch size
        # baked in (wrong vectors for other batch sizes), so transformers models stay on PyTorch for now.
        raise ValueError("ONNX export of transformers models is not supported yet; it works for 'lite'")
    if not isinstance(encoder, LiteEncoder):
        raise ValueError(f"cannot export a {type(encoder).__name__} to ONNX")
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    sample = Image.new("RGB", (64, 48), (120, 80, 40))
    text_kwargs = {"padding": True, "truncation": True, "max_length": TEXT_MAX_TOKENS}
    tokens = encoder.towers.tokenize(["a photo of a dog", "two people"])
    _export(_LiteImage(encoder).eval(), (encoder.towers.pixels([sample, sample]),), {"pixel_values": {0: "batch"}},
            folder / "image.onnx")
    _export(_LiteText(encoder).eval(), tuple(tokens[name] for name in TEXT_INPUTS),
            {name: {0: "batch", 1: "tokens"} for name in TEXT_INPUTS}, folder / "text.onnx")
    if int8:  # the text tower only: int8 depthwise convolutions are slower on CPU and cost much accuracy
        _quantize(folder / "text.onnx")
    encoder.towers.tokenizer.save_pretrained(folder)
    atomic_write_json(folder / CONFIG, {
        "format": "crossmodal-onnx", "source": encoder.name, "dim": encoder.dim, "int8": int8,
        "fingerprint": encoder.fingerprint + ("-int8" if int8 else ""),
        "image": {"resolution": encoder.towers.resolution}, "text": {"inputs": list(TEXT_INPUTS),
                                                                     "kwargs": text_kwargs},
    })
    return folder


def _export(module: torch.nn.Module, args: tuple, dynamic: dict[str, dict[int, str]], path: Path) -> None:
    with torch.no_grad():
        torch.onnx.export(module, args, str(path), input_names=list(dynamic), output_names=["embedding"],
                          dynamic_axes={**dynamic, "embedding": {0: "batch"}}, opset_version=17, dynamo=False)


def _quantize(path: Path) -> None:
    """Dynamic int8 quantization of the weights (activations quantized on the fly)."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    tmp = path.with_suffix(".int8.onnx")
    quantize_dynamic(str(path), str(tmp), weight_type=QuantType.QInt8)
    tmp.replace(path)


class OnnxEncoder(Encoder):
    """Runs an ``export_onnx`` folder with ONNX Runtime on the CPU."""

    def __init__(self, folder: str | Path, threads: int | None = None, batch_size: int = 32) -> None:
        import onnxruntime as ort
        from transformers import AutoTokenizer

        folder = Path(folder).expanduser().resolve()
        self.config = json.loads((folder / CONFIG).read_text())
        self.name = str(folder)
        self.fingerprint = self.config["fingerprint"]
        self.dim = int(self.config["dim"])
        self.batch_size = batch_size
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads or os.cpu_count() or 1
        self.image_session = ort.InferenceSession(str(folder / "image.onnx"), options,
                                                  providers=["CPUExecutionProvider"])
        self.text_session = ort.InferenceSession(str(folder / "text.onnx"), options,
                                                 providers=["CPUExecutionProvider"])
        self.tokenizer = AutoTokenizer.from_pretrained(folder)

    def _encode_images(self, images: Sequence[Image.Image]) -> np.ndarray:
        from .lite import preprocess_image

        size = self.config["image"]["resolution"]
        pixels = np.stack([preprocess_image(im, size).numpy() for im in images])
        return self.image_session.run(None, {"pixel_values": pixels.astype(np.float32)})[0]

    def _encode_texts(self, texts: Sequence[str]) -> np.ndarray:
        tokens = self.tokenizer(list(texts), return_tensors="np", **self.config["text"]["kwargs"])
        feed = {name: np.asarray(tokens[name], dtype=np.int64) for name in self.config["text"]["inputs"]}
        return self.text_session.run(None, feed)[0]


def is_onnx_folder(path: Path) -> bool:
    return (path / CONFIG).is_file()
