"""Encoders: one interface (``encode_images``, ``encode_texts``, ``dim``, ``name``), several backends."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

from .base import Encoder


def load_encoder(name: str, device: str = "cpu") -> Encoder:
    """Load a model by name: ``lite`` (offline default), a lite weights file or a folder holding one (what
    ``crossmodal train`` writes), an ONNX export folder, or a transformers id/folder."""
    return _load(name, device)


@lru_cache(maxsize=4)
def _load(name: str, device: str) -> Encoder:
    if name == "lite":
        from .lite import LiteEncoder

        return LiteEncoder(device=device)
    path = Path(name).expanduser()
    if path.is_dir() and (path / "crossmodal-onnx.json").is_file():
        from .onnx import OnnxEncoder

        return OnnxEncoder(path)
    if path.is_dir() and (path / "lite.safetensors").is_file():
        path = path / "lite.safetensors"
    if path.suffix == ".safetensors" and path.is_file():
        from .lite import LiteEncoder

        return LiteEncoder(path, device=device)
    from .hf import HFDualEncoder

    return HFDualEncoder(name, device=device)


__all__ = ["Encoder", "load_encoder"]
