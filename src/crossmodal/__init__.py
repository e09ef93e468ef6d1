"""crossmodal: cross-modal retrieval. Find photos by describing them, captions for a photo, similar photos."""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

if TYPE_CHECKING:
    from .collection.collection import Collection, Hit
    from .encoders import load_encoder

# Imported on first use, so that `crossmodal --help` and the command's start do not pay for numpy and the rest.
_LAZY = {"Collection": ".collection.collection", "Hit": ".collection.collection", "load_encoder": ".encoders"}


def __getattr__(name: str) -> Any:
    """``Collection``, ``Hit`` and ``load_encoder``, imported when first asked for."""
    if name not in _LAZY:
        raise AttributeError(f"module 'crossmodal' has no attribute {name!r}")
    return getattr(import_module(_LAZY[name], __name__), name)


__all__ = ["Collection", "Hit", "load_encoder", "__version__"]
