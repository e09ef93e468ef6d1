"""What the ``lite`` model is, without PyTorch: its shipped weights file, its name in manifests, its token
limit and its photo preprocessing (numpy), so that the ONNX Runtime path starts without importing torch."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

WEIGHTS = Path(__file__).parent / "weights" / "lite.safetensors"
TEXT_MAX_TOKENS = 128


def model_name(weights: Path) -> str:
    """How a lite weights file is named in manifests: ``lite`` for the shipped one, else its path."""
    return "lite" if Path(weights) == WEIGHTS else str(Path(weights).resolve())


def preprocess_array(image: Image.Image, size: int) -> np.ndarray:
    """Resize the short side to ``size``, centre-crop a square, scale as (x - 127) / 128 (Lite's TF input);
    (3, size, size) float32."""
    w, h = image.size
    scale = size / min(w, h)
    if (w, h) != (size, size):
        image = image.resize((max(size, round(w * scale)), max(size, round(h * scale))), Image.BICUBIC)
        w, h = image.size
        left, top = (w - size) // 2, (h - size) // 2
        image = image.crop((left, top, left + size, top + size))
    arr = np.asarray(image.convert("RGB"), dtype=np.float32)
    return ((arr - 127.0) / 128.0).transpose(2, 0, 1)
