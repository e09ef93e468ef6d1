"""The ONNX Runtime copy of a lite model, exported once per weights file into the user cache.

This is what makes the default model fast on a CPU with no setup (as rclip does with ONNX Runtime):
the first load exports the towers (a few seconds), later loads read the cached graphs directly,
without building the PyTorch model at all.
"""

from __future__ import annotations

import os
import shutil
import threading
from collections.abc import Callable
from pathlib import Path

from platformdirs import user_cache_dir

from .base import Encoder
from .fingerprint import fingerprint_files
from .lite_spec import model_name

# Bump when the export changes, so caches written by older code are not reused.
EXPORT_VERSION = 4


def cache_root() -> Path:
    """Where ONNX exports live: $CROSSMODAL_CACHE, else the per-user cache folder."""
    return Path(os.environ.get("CROSSMODAL_CACHE") or user_cache_dir("crossmodal")) / "onnx"


def cache_folder(weights: Path, int8_text: bool = False) -> Path:
    """Where the export of ``weights`` lives."""
    return cache_root() / f"lite-v{EXPORT_VERSION}-{fingerprint_files([weights])}{'-int8' if int8_text else ''}"


def publish(folder: Path, marker: str, build: Callable[[Path], None]) -> None:
    """Build an export in a temporary sibling of ``folder`` and rename it into place, so no reader sees half of
    one; an error stands unless another process or thread finished the same export meanwhile (``folder/marker``
    exists)."""
    tmp = folder.with_name(f"{folder.name}.tmp-{os.getpid()}-{threading.get_ident()}")
    try:
        build(tmp)
        tmp.rename(folder)
    except Exception:
        if not (folder / marker).is_file():
            raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def cached_lite_onnx(weights: Path, required: bool = False, int8_text: bool = False) -> Encoder | None:
    """The lite model of ``weights`` on ONNX Runtime (with its int8 text tower when ``int8_text``),
    exporting it first if needed; ``None`` (or an error, when ``required``) where ONNX Runtime is not
    installed or the export fails."""
    try:
        import onnxruntime  # noqa: F401
    except ImportError:
        if required:
            raise ImportError("the onnx backend needs onnxruntime and onnx: pip install onnxruntime onnx") from None
        return None
    from .onnx import CONFIG, OnnxEncoder

    name = model_name(weights)
    folder = cache_folder(weights, int8_text)
    if not (folder / CONFIG).is_file() and not _export(weights, folder, name, required, int8_text):
        return None
    return OnnxEncoder(folder, name=name)


def _export(weights: Path, folder: Path, name: str, required: bool, int8_text: bool) -> bool:
    """Export the lite model of ``weights`` into ``folder`` through a temporary folder; False (or the error,
    when ``required``) where it fails. Only this imports PyTorch: later loads read the cached graphs."""
    from tqdm import tqdm

    from .onnx import CONFIG

    try:
        import onnx  # noqa: F401
    except ImportError:
        if required:
            raise ImportError("exporting lite to ONNX Runtime needs onnx: pip install onnx") from None
        return False
    from .lite import LiteEncoder
    from .onnx_export import export_onnx

    try:
        tqdm.write(f"exporting {name} to ONNX Runtime (once) into {folder}")
        publish(folder, CONFIG, lambda tmp: export_onnx(LiteEncoder(weights), tmp, int8=int8_text))
    except Exception as e:
        if required:
            raise
        tqdm.write(f"ONNX export failed ({e}); running {name} on PyTorch")
        return False
    return True
