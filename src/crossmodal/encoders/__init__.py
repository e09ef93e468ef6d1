"""Encoders: one interface (``encode_images``, ``encode_texts``, ``dim``, ``name``), several backends."""

from __future__ import annotations

import copy
import os
from functools import lru_cache
from pathlib import Path

from .base import MIRROR, Encoder

BACKENDS = ("auto", "torch", "onnx")


def load_encoder(name: str, device: str | None = None, backend: str | None = None, int8_text: bool = False,
                 multilingual: bool | None = None) -> Encoder:
    """Load a model by name: ``lite`` (offline default), a lite weights file or a folder holding one (what
    ``crossmodal train`` writes), an ONNX export folder, or a transformers id/folder; any of them followed by
    ``+mirror`` (``lite+mirror``) reads each photo twice, as it is and mirrored (``Encoder.mirror``).

    ``backend`` (default ``$CROSSMODAL_BACKEND``, else ``auto``) says how a lite model runs on the CPU:
    ``auto`` uses ONNX Runtime when it is installed (the model is exported once into the user cache;
    same vectors and fingerprint, 2-4x faster), ``torch`` PyTorch, ``onnx`` ONNX Runtime or an error.
    ``device`` (default ``$CROSSMODAL_DEVICE``, else ``cpu``) is where PyTorch models run, e.g. ``cuda``.
    ``int8_text`` runs a lite model on ONNX Runtime with its int8 text tower (1.5x faster queries, same photo
    vectors and fingerprint, dev RSUM +0.5 for the dual encoder; see docs/benchmarks.md); other models ignore it.
    ``multilingual`` (default: on unless ``$CROSSMODAL_MULTILINGUAL`` is ``0``) attaches the model's multilingual
    query tower when it has one (encoders/multilingual.py): texts in a language other than English go through it.
    """
    backend = backend or os.environ.get("CROSSMODAL_BACKEND") or "auto"
    if backend not in BACKENDS:
        raise ValueError(f"unknown backend {backend!r}; use one of {', '.join(BACKENDS)}")
    if multilingual is None:
        multilingual = os.environ.get("CROSSMODAL_MULTILINGUAL", "1") != "0"
    return _load(name, resolve_device(device), backend, int8_text, multilingual)


def resolve_device(device: str | None = None) -> str:
    """``device``, else ``$CROSSMODAL_DEVICE``, else ``cpu``; a clear error when it names a GPU PyTorch cannot see."""
    device = device or os.environ.get("CROSSMODAL_DEVICE") or "cpu"
    if device.startswith("cuda"):
        import torch

        if not torch.cuda.is_available():
            raise ValueError(f"device {device!r}: PyTorch {torch.__version__} sees no GPU here; use --device cpu")
    return device


@lru_cache(maxsize=4)
def _load(name: str, device: str, backend: str, int8_text: bool, multilingual: bool) -> Encoder:
    if name.endswith(MIRROR):  # the same model and weights (fingerprint, bank, reranker), photos read twice
        encoder = copy.copy(_load(name.removesuffix(MIRROR), device, backend, int8_text, multilingual))
        encoder.mirror, encoder.name = True, name
        return encoder
    encoder = _load_model(name, device, backend, int8_text)
    if multilingual:
        from .multilingual import find_multilingual

        own = model_folder(name)
        encoder.multilingual = find_multilingual(encoder.fingerprint, *([own] if own else []))
    return encoder


def model_folder(name: str) -> Path | None:
    """The folder of a local model's files (a lite weights file's or a model folder), where its own pipeline parts
    are looked for first (``bank.npz``, ``reranker/``, the multilingual tower); None for lite and hub ids."""
    path = Path(name.removesuffix(MIRROR)).expanduser()
    if name.removesuffix(MIRROR) == "lite" or not path.exists():
        return None
    return path if path.is_dir() else path.parent


def model_fingerprint(name: str) -> str | None:
    """The fingerprint ``load_encoder(name)`` would give, from the weight files alone (no model loaded): lite, a
    lite weights file or folder, an ONNX export or a local transformers folder; None for a hub id, which only
    loading can resolve. Lets a command refuse a collection of other weights before it starts anything."""
    from .fingerprint import fingerprint_files, fingerprint_folder

    name = name.removesuffix(MIRROR)
    path = Path(name).expanduser()
    if name != "lite" and path.is_dir() and (path / "crossmodal-onnx.json").is_file():
        import json

        return str(json.loads((path / "crossmodal-onnx.json").read_text())["fingerprint"])
    weights = lite_weights(name)
    if weights is not None:
        return fingerprint_files([weights])
    return fingerprint_folder(path) if path.is_dir() else None


def lite_weights(name: str) -> Path | None:
    """The lite weights file ``name`` points to: lite's own, a ``.safetensors`` file, or a folder holding
    ``lite.safetensors`` (what `crossmodal train` writes); None when it names no lite model."""
    if name == "lite":
        from .lite_spec import WEIGHTS

        return WEIGHTS
    path = Path(name).expanduser()
    if path.is_dir() and (path / "lite.safetensors").is_file():
        path = path / "lite.safetensors"
    return path if path.suffix == ".safetensors" and path.is_file() else None


def _load_model(name: str, device: str, backend: str, int8_text: bool) -> Encoder:
    path = Path(name).expanduser()
    if name != "lite" and path.is_dir() and (path / "crossmodal-onnx.json").is_file():
        from .onnx import OnnxEncoder

        return OnnxEncoder(path)
    weights = lite_weights(name)
    if weights is not None:
        return _lite(weights, device, backend, int8_text)
    from .hf import HFDualEncoder

    return HFDualEncoder(name, device=device)


def _lite(weights: Path, device: str, backend: str, int8_text: bool) -> Encoder:
    if device == "cpu" and backend != "torch":
        from .onnx_cache import cached_lite_onnx

        encoder = cached_lite_onnx(weights, required=backend == "onnx", int8_text=int8_text)
        if encoder is not None:
            return encoder
    from .lite import LiteEncoder

    return LiteEncoder(weights, device=device)


__all__ = ["BACKENDS", "Encoder", "load_encoder"]
