"""ONNX Runtime backend: an encoder exported to two ONNX graphs (photo tower, text tower).

``export_onnx(encoder, folder)`` (onnx_export.py) writes ``image.onnx``, ``text.onnx``, the preprocessing
files (tokenizer, and for transformers models the image processor) and ``crossmodal-onnx.json``;
``OnnxEncoder(folder)`` runs them, without importing PyTorch or (for lite) transformers, and opens each
graph when it is first used, so a text query never loads the photo tower. One native call per batch (no
Python between layers) is what makes it fast on a busy CPU. An export keeps the source model's
fingerprint, so collections built with the source model accept its queries: float32 vectors agree to
cosine >= 0.999, and ``--int8`` leaves the photo tower in float32 and quantizes only the text tower, whose
vectors retrieve as well as float32 ones (measured on Flickr8k dev; see docs/benchmarks.md).
"""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Callable, Mapping, Sequence
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from .base import Encoder, normalize
from .lite_spec import preprocess_array
from .tokenizer import WholeWords

CONFIG = "crossmodal-onnx.json"


# ONNX Runtime fusions that make our graphs slower on the CPU. Its SkipLayerNormalization kernel (residual add + layer
# norm, fused at load in lite's text tower) ran 2.6-5.5x slower than Add + LayerNormalization (1.32, one thread,
# 8 x 25 x 384: 641 against 117 us), about a fifth of the multilingual tower's time (benchmarks/skip_layer_norm.py).
SLOW_FUSIONS = ["SkipLayerNormFusion"]


def _session(path: Path, threads: int) -> Any:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.log_severity_level = 3  # errors only: ONNX Runtime's notes on the graph are not for users
    # Idle worker threads sleep instead of spinning, so decoding threads and the server keep their cores.
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"],
                                disabled_optimizers=SLOW_FUSIONS)


class OnnxEncoder(Encoder):
    """Runs an ``export_onnx`` folder with ONNX Runtime on the CPU."""

    def __init__(self, folder: str | Path, threads: int | None = None, batch_size: int | None = None,
                 name: str | None = None) -> None:
        folder = Path(folder).expanduser().resolve()
        self.config = json.loads((folder / CONFIG).read_text())
        self.name = name or str(folder)
        self.fingerprint = self.config["fingerprint"]
        self.dim = int(self.config["dim"])
        self.rerank_inputs = bool(self.config.get("rerank_inputs"))  # lite exports since EXPORT_VERSION 3
        cores = os.cpu_count() or 1
        self.batch_size = batch_size or min(64, 16 * cores)
        self.folder = folder
        self._opening = threading.Lock()
        self.use_threads(threads or cores)
        if self.config.get("preprocess", "lite") == "transformers":
            from .onnx_hf import TransformersInputs

            self.inputs: Any = TransformersInputs(folder, self.config)
        else:
            self.inputs = _LiteInputs(folder, self.config)

    def knows_words(self, text: str) -> bool:
        return self._whole_words is None or self._whole_words(text)

    @cached_property
    def _whole_words(self) -> WholeWords | None:
        """The text tower's vocabulary, when the tokenizers library reads it (lite's exports)."""
        tokenizer = getattr(self.inputs.tokenize, "tokenizer", None)
        return None if tokenizer is None else WholeWords(tokenizer)

    def use_threads(self, threads: int) -> None:
        """Run each session with ``threads`` threads (sessions open again on next use). One thread suits callers
        that run several batches at once (the server's workers): each call then runs on its caller's core."""
        with self._opening:
            self.threads = threads
            self._sessions: dict[str, Any] = {}
        if self.multilingual is not None:
            self.multilingual.use_threads(threads)

    def _tower(self, name: str) -> Any:
        """The session of the ``image`` or ``text`` graph, opened on first use (a text query never opens the
        photo tower, about a third of a cold search's time otherwise)."""
        session = self._sessions.get(name)
        if session is None:
            with self._opening:
                session = self._sessions.get(name) or _session(self.folder / f"{name}.onnx", self.threads)
                self._sessions[name] = session
        return session

    @property
    def image_session(self) -> Any:
        return self._tower("image")

    @property
    def text_session(self) -> Any:
        return self._tower("text")

    def prepare_image(self, image: Image.Image) -> Any:
        return self.inputs.prepare_image(image)

    def _encode_images(self, images: Sequence[Any]) -> np.ndarray:
        return self.image_session.run(["embedding"], self.inputs.images(images))[0]

    def encode_prepared_grids(self, prepared: Sequence[Any]) -> tuple[np.ndarray, np.ndarray]:
        if not self.rerank_inputs:
            return super().encode_prepared_grids(prepared)
        vectors, grid = self.image_session.run(["embedding", "grid"], self.inputs.images(prepared))
        return normalize(self.with_mirror(vectors, prepared)), grid

    def token_states(self, texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        if not self.rerank_inputs:
            return super().token_states(texts)
        (states,), mask = self._run_texts(texts, ["states"])
        return states, mask

    def _encode_texts(self, texts: Sequence[str]) -> np.ndarray:
        return self._run_texts(texts, ["embedding"])[0][0]

    def encode_texts_with_states(self, texts: Sequence[str]
                                 ) -> tuple[np.ndarray, list[tuple[np.ndarray, np.ndarray] | None]]:
        """As the base class, from one model call: a query's vector and what the reranker reads of it cost one
        pass of the text tower."""
        texts = list(texts)
        foreign = self.foreign(texts)
        if not self.rerank_inputs or not texts or foreign.any():
            return self._vectors_and_states(texts, foreign)
        (vectors, states), mask = self._run_texts(texts, ["embedding", "states"])
        lengths = mask.sum(1)
        return normalize(vectors), [(s[None, :n], m[None, :n]) for s, m, n in zip(states, mask, lengths, strict=True)]

    def _run_texts(self, texts: Sequence[str], outputs: list[str]) -> tuple[list[np.ndarray], np.ndarray | None]:
        """Run texts of similar token length together, each group padded only to its own longest: in a batch
        of 16 search queries a third of the tokens were padding (right padding, so slicing it off is exact).
        Returns (each output for every text in order, per-token outputs padded to the longest text; the
        attention mask, if the graph takes one)."""
        feeds = self.inputs.texts(texts)
        if self.config["text"]["kwargs"].get("padding") == "max_length" or "attention_mask" not in feeds:
            return self.text_session.run(outputs, feeds), feeds.get("attention_mask")
        lengths = feeds["attention_mask"].sum(1)
        order = np.argsort(lengths, kind="stable")
        results: list[np.ndarray] = []
        for group in length_groups(lengths[order]):
            rows = order[group]
            longest = int(lengths[rows].max())
            values = self.text_session.run(outputs, {k: v[rows, :longest] for k, v in feeds.items()})
            if not results:
                width = feeds["attention_mask"].shape[1]
                results = [np.zeros((len(texts), width, v.shape[2]) if v.ndim == 3 else (len(texts), *v.shape[1:]),
                                    dtype=v.dtype) for v in values]
            for out, value in zip(results, values, strict=True):
                if value.ndim == 3:
                    out[rows, :longest] = value
                else:
                    out[rows] = value
        return results, feeds["attention_mask"]


def length_groups(sorted_lengths: np.ndarray, slack: float = 0.15) -> list[slice]:
    """Split ascending lengths into runs whose longest is within ``slack`` (and 2 tokens) of their shortest."""
    groups, start = [], 0
    for i, length in enumerate(sorted_lengths):
        if length - sorted_lengths[start] > max(2, slack * sorted_lengths[start]):
            groups.append(slice(start, i))
            start = i
    return [*groups, slice(start, len(sorted_lengths))] if len(sorted_lengths) else []


class TextInputs:
    """The text graph's feeds from the tokenizer saved beside it, as int64 arrays; shared by every export."""

    def __init__(self, folder: Path, config: dict[str, Any]) -> None:
        self.config = config
        self.tokenize = self._tokenizer(folder, config["text"]["kwargs"])
        self._tokenizing = threading.Lock()  # a fast tokenizer's settings are shared state ("Already borrowed")

    def _tokenizer(self, folder: Path, kwargs: dict[str, Any]) -> Callable[[list[str]], Mapping[str, Any]]:
        """texts -> token arrays by name: the tokenizer transformers saved, run by transformers."""
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(folder)
        return lambda texts: tokenizer(texts, return_tensors="np", **kwargs)

    def texts(self, texts: Sequence[str]) -> dict[str, np.ndarray]:
        with self._tokenizing:
            tokens = self.tokenize(list(texts))
        return {name: np.asarray(tokens[name], dtype=np.int64) for name in self.config["text"]["inputs"]}


class _LiteInputs(TextInputs):
    """ONNX feeds for an exported ``lite``: lite's own photo preprocessing and the MiniLM tokenizer, run by the
    tokenizers library from its tokenizer.json (transformers takes a second to import; same tokens)."""

    def _tokenizer(self, folder: Path, kwargs: dict[str, Any]) -> Callable[[list[str]], Mapping[str, Any]]:
        from .tokenizer import FastTokenizer

        if not (folder / "tokenizer.json").is_file():  # an export written by a slow tokenizer
            return super()._tokenizer(folder, kwargs)
        return FastTokenizer(folder, **kwargs)

    def prepare_image(self, image: Image.Image) -> np.ndarray:
        return preprocess_array(image, self.config["image"]["resolution"])

    def images(self, prepared: Sequence[np.ndarray]) -> dict[str, np.ndarray]:
        return {"pixel_values": np.stack(prepared)}
