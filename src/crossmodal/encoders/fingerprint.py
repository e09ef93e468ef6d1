"""Short content fingerprints of model weights, cheap even for multi-GB checkpoints."""

from __future__ import annotations

import hashlib
from pathlib import Path

WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pth", ".pt", ".json", ".onnx")
_SAMPLE = 1 << 20


def fingerprint_files(paths: list[Path]) -> str:
    """Hash each file's name, size, first and last MiB: changes whenever the weights change in practice."""
    h = hashlib.sha256()
    for path in sorted(paths, key=lambda p: p.name):
        size = path.stat().st_size
        h.update(f"{path.name}:{size}".encode())
        with path.open("rb") as f:
            h.update(f.read(_SAMPLE))
            if size > 2 * _SAMPLE:
                f.seek(size - _SAMPLE)
                h.update(f.read(_SAMPLE))
    return h.hexdigest()[:16]


def fingerprint_folder(folder: Path) -> str:
    """Fingerprint the weight and config files of a model folder."""
    return fingerprint_files([p for p in folder.iterdir() if p.is_file() and p.suffix in WEIGHT_SUFFIXES])
