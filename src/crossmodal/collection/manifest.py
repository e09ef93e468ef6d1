"""The collection manifest: which model made the vectors, their dimension, the format version."""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from .. import __version__
from ..encoders.base import MIRROR
from .atomic import atomic_write_json

FORMAT = "crossmodal-collection"
FORMAT_VERSION = 1
MANIFEST = "manifest.json"


class ModelMismatchError(ValueError):
    """A query or an add used a different model than the one the collection was built with."""


@dataclass
class Manifest:
    model: str
    fingerprint: str
    dim: int
    format: str = FORMAT
    format_version: int = FORMAT_VERSION
    created: float = field(default_factory=time.time)
    # How to index the vectors: {"kind": "auto" or a kind, "memory": bytes or None, "recall": target},
    # and, per item kind, the plan the planner chose from them (see index/planner.py).
    index: dict = field(default_factory=lambda: {"kind": "auto", "memory": None, "recall": 0.95})
    crossmodal_version: str = __version__

    @classmethod
    def read(cls, folder: Path) -> Manifest:
        data = json.loads((folder / MANIFEST).read_text())
        if data.get("format") != FORMAT:
            raise ValueError(f"{folder} is not a crossmodal collection (manifest format {data.get('format')!r})")
        if data.get("format_version", 0) > FORMAT_VERSION:
            raise ValueError(
                f"{folder} was written by a newer crossmodal (format {data['format_version']}); upgrade crossmodal"
            )
        known = cls.__dataclass_fields__
        return cls(**{k: v for k, v in data.items() if k in known})

    def write(self, folder: Path) -> None:
        atomic_write_json(folder / MANIFEST, asdict(self))

    def check(self, model: str, fingerprint: str) -> None:
        """Raise ModelMismatchError unless (model, fingerprint) is the one this collection was built with."""
        if fingerprint != self.fingerprint:
            built = f"this collection was built with model {self.model!r} (weights {self.fingerprint})"
            if model == self.model:
                raise ModelMismatchError(
                    f"{built}; this crossmodal's {model!r} is another version of it (weights {fingerprint}). "
                    "`crossmodal upgrade -c COLLECTION` encodes the collection again with it (it answers as before "
                    "until that is done).")
            raise ModelMismatchError(
                f"{built}, not {model!r} (weights {fingerprint}); vectors of different models cannot be compared. "
                f"Query without --model to use {self.model!r}, index into a new collection with the other model, or "
                f"encode this one again with it: `crossmodal upgrade -c COLLECTION --model {model}`.")
        if model.endswith(MIRROR) != self.model.endswith(MIRROR):
            raise ModelMismatchError(
                f"this collection reads photos as model {self.model!r} does, not as {model!r}: its photo vectors would "
                f"mix two readings. Use it without --model, or index into a new collection with {model!r}.")
