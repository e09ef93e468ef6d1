"""Vector indexes behind one interface: exact flat, HNSW, IVF-PQ and binary codes (all FAISS).

The names below are imported on first use, so that importing the planner, or a collection that searches
its snapshot exactly (every collection up to 50,000 items), does not import FAISS (60 ms of a cold search).
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .base import VectorIndex, VectorLookup
    from .registry import KINDS, add_in_batches, build_index, load_index, make_index

_MODULES = {"VectorIndex": ".base", "VectorLookup": ".base", "KINDS": ".registry", "add_in_batches": ".registry",
            "build_index": ".registry", "load_index": ".registry", "make_index": ".registry"}


def __getattr__(name: str) -> Any:
    """The index names, imported when first asked for."""
    if name not in _MODULES:
        raise AttributeError(f"module 'crossmodal.index' has no attribute {name!r}")
    return getattr(import_module(_MODULES[name], __name__), name)


__all__ = ["KINDS", "VectorIndex", "VectorLookup", "add_in_batches", "build_index", "load_index", "make_index"]
