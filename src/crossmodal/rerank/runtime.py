"""The reranker at query time, on ONNX Runtime (no torch): photo tokens at index time, logits at query time.

A folder holds ``photo.onnx`` (grid (N, 1280, 7, 7) -> tokens (N, T, d)), ``score.onnx`` ((B, L, 384) token
states, (B, L) mask, (B, T, d) photo tokens -> (B,) logits) and ``reranker.json`` (config, fusion weight,
fingerprint, dev figures). Fused score of a top-N candidate: ``dual + weight * logit``.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import warnings
from functools import cached_property, partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ..encoders.onnx_cache import cache_root, publish
from .words import WORDS_FILE

if TYPE_CHECKING:
    from .words import WordModel

DEFAULT_FOLDER = Path(__file__).resolve().parents[1] / "encoders" / "weights" / "reranker-lite"
GRAPHS = ("photo.onnx", "score.onnx")
# The scale of block 0's cross-attention LayerNorm, as ``export_reranker_onnx`` names it: the tensor that norm reads
# is where the photo first enters the score graph, so everything before it depends on the caption alone.
PHOTO_ENTERS = "model.blocks.0.ln_cross.weight"
HALVES, CUT_FILE = ("caption.onnx", "pair.onnx"), "cut.txt"
HALVES_VERSION = 1  # bump when the cut changes, so halves cut by older code are not reused


def weights_fingerprint(folder: Path, graphs: tuple[str, ...] = GRAPHS, read: dict[str, bytes] | None = None) -> str:
    """sha256 over the ONNX graphs' names and bytes, first 16 hex digits (``read``: files' bytes already read, by
    name, so that several fingerprints of one folder read each file once)."""
    h = hashlib.sha256()
    for name in graphs:
        h.update(name.encode())
        h.update(read[name] if read is not None else (Path(folder) / name).read_bytes())
    return h.hexdigest()[:16]


class Reranker:
    """A cross-encoder reranker for one dual encoder, run with ONNX Runtime."""

    def __init__(self, folder: Path, threads: int = 1) -> None:
        self.folder = Path(folder)
        self.threads = threads
        self.meta: dict[str, Any] = json.loads((self.folder / "reranker.json").read_text())
        self.weight = float(self.meta["weight"])
        self.tokens = int(self.meta["tokens"])
        self.d = int(self.meta["d"])
        words = (WORDS_FILE,) if (self.folder / WORDS_FILE).is_file() else ()
        read = {name: (self.folder / name).read_bytes() for name in GRAPHS + words}
        self.fingerprint = weights_fingerprint(self.folder, GRAPHS + words, read)  # what its scores depend on
        # What stored photo tokens depend on: the photo graph alone (a re-quantised score graph keeps them); a
        # photo's stored words depend on the classifier too (None: no classifier, no words stored).
        self.tokens_fingerprint = weights_fingerprint(self.folder, ("photo.onnx",), read)
        self.words_fingerprint = weights_fingerprint(self.folder, ("photo.onnx", *words), read) if words else None
        self.name = self.meta.get("name") or self.folder.name

    @property
    def stored_fingerprint(self) -> str:
        """Names all a photo stores for this reranker (its tokens and words)."""
        return f"{self.tokens_fingerprint}/{self.words_fingerprint}"

    @classmethod
    def load(cls, folder: str | Path | None = None, threads: int = 1) -> Reranker:
        """Open a reranker folder; ``None`` or ``"default"`` is the one shipped for ``lite``."""
        folder = DEFAULT_FOLDER if folder in (None, "default", "lite") else Path(folder)
        if not (Path(folder) / "reranker.json").is_file():
            raise FileNotFoundError(f"no reranker at {folder} (expected photo.onnx, score.onnx, reranker.json)")
        return cls(Path(folder), threads)

    @cached_property
    def words(self) -> WordModel | None:
        """The caption-word classifier shipped beside this reranker (``words.npz``), if any: lexical evidence
        for photo queries ranking captions (rerank/words.py)."""
        from .words import WordModel

        path = self.folder / WORDS_FILE
        return WordModel.load(path) if path.is_file() else None

    def photo_words(self, grid: np.ndarray) -> np.ndarray | None:
        """P(word | photo) (N, V) of grids (N, 1280, 7, 7) from their pooled features, or None without words."""
        words = self.words
        return None if words is None else words.photo_words(np.asarray(grid, dtype=np.float32).mean(axis=(2, 3)))

    def photo_records(self, grid: np.ndarray) -> np.ndarray | None:
        """Each photo's likeliest words (N, top) as it stores them (rerank/words.py), or None without words."""
        probabilities = self.photo_words(grid)
        return None if probabilities is None else self.words.records(probabilities)

    @cached_property
    def _photo(self) -> Any:
        return self._session("photo.onnx")

    @cached_property
    def _score(self) -> Any:
        return self._session("score.onnx")

    @cached_property
    def _halves(self) -> tuple[Any, Any, str] | None:
        """The score graph cut where the photo first enters: (caption half, pair half, the tensor between them),
        so that a caption scored against many photos runs its half once; None for a graph with no such cut. The
        halves are cut once and kept in the user cache beside lite's ONNX export, so a later process opens them
        without importing onnx (a cold search stays quick); where the cache cannot be written they are cut again."""
        folder = cache_root() / f"reranker-halves-v{HALVES_VERSION}-{self.fingerprint}"
        try:
            cut = (folder / CUT_FILE).read_text()
            graphs = [(folder / name).read_bytes() for name in HALVES] if cut else []
        except OSError:
            cut, graphs = self._cut()
            with contextlib.suppress(OSError):
                publish(folder, CUT_FILE, partial(_write_halves, cut=cut, graphs=graphs))
        return (self._session(graphs[0]), self._session(graphs[1]), cut) if cut else None

    def _cut(self) -> tuple[str, list[bytes]]:
        """(the tensor where the photo first enters, the serialised caption and pair halves), or ("", []) when the
        score graph has no such cut."""
        import onnx
        from onnx.utils import Extractor

        graph = onnx.load(str(self.folder / "score.onnx"))
        cut = next((n.input[0] for n in graph.graph.node
                    if n.op_type == "LayerNormalization" and n.input[1:2] == [PHOTO_ENTERS]), None)
        if cut is None:
            return "", []
        if cut not in {v.name for v in graph.graph.value_info}:  # the extractor must know its type (shape: any)
            graph.graph.value_info.append(onnx.helper.make_tensor_value_info(cut, onnx.TensorProto.FLOAT, None))
        extractor = Extractor(graph)
        caption = extractor.extract_model(["text_states", "text_mask"], [cut])
        pair = extractor.extract_model([cut, "text_mask", "photo_tokens"], ["logits"])
        if {i.name for i in pair.graph.input} != {cut, "text_mask", "photo_tokens"}:
            return "", []
        return cut, [caption.SerializeToString(), pair.SerializeToString()]

    def _session(self, graph: str | bytes) -> Any:
        """An ONNX Runtime session of one graph (a file of the folder, or a graph's bytes), opened when first used
        (opening a collection stays cheap)."""
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = self.threads
        options.inter_op_num_threads = 1
        options.log_severity_level = 3  # errors only: ONNX Runtime's notes on the graph are not for users
        model = graph if isinstance(graph, bytes) else str(self.folder / graph)
        return ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])

    def photo_tokens(self, grid: np.ndarray) -> np.ndarray:
        """Grid (N, 1280, 7, 7) float32 -> photo tokens (N, T, d) float16, to store beside each photo."""
        (out,) = self._photo.run(None, {"grid": np.ascontiguousarray(grid, dtype=np.float32)})
        return out.astype(np.float16)

    def score(self, text_states: np.ndarray, text_mask: np.ndarray, photo_tokens: np.ndarray) -> np.ndarray:
        """Logits (B,) float32 of aligned pairs: token states (B, L, 384), mask (B, L), photo tokens (B, T, d)."""
        feeds = {"text_states": np.ascontiguousarray(text_states, dtype=np.float32),
                 "text_mask": np.ascontiguousarray(text_mask, dtype=np.int64),
                 "photo_tokens": np.ascontiguousarray(photo_tokens, dtype=np.float32)}
        (out,) = self._score.run(None, feeds)
        return out.astype(np.float32)

    def score_photos(self, text_states: np.ndarray, text_mask: np.ndarray, photo_tokens: np.ndarray) -> np.ndarray:
        """Logits (N,) of one caption, token states (1, L, 384) and mask (1, L), against photo tokens (N, T, d):
        equal to ``score`` of the caption repeated N times, with the caption's half of the graph run once. Padding
        after the caption's last token (from a batch of longer captions) is dropped, so a caption scores the same
        whatever it was encoded with (the int8 graph's ranges would count the padding)."""
        n, end = len(photo_tokens), int(np.flatnonzero(text_mask[0]).max(initial=0)) + 1
        text_states, text_mask = text_states[:, :end], text_mask[:, :end]
        if self._halves is None:
            return self.score(np.repeat(text_states, n, 0), np.repeat(text_mask, n, 0), photo_tokens)
        caption, pair, cut = self._halves
        mask = np.ascontiguousarray(text_mask, dtype=np.int64)
        (hidden,) = caption.run(None, {"text_states": np.ascontiguousarray(text_states, dtype=np.float32),
                                       "text_mask": mask})
        (out,) = pair.run(None, {cut: np.repeat(hidden, n, 0), "text_mask": np.repeat(mask, n, 0),
                                 "photo_tokens": np.ascontiguousarray(photo_tokens, dtype=np.float32)})
        return out.astype(np.float32)

    def __repr__(self) -> str:
        return f"Reranker(name={self.name!r}, tokens={self.tokens}, d={self.d}, weight={self.weight})"


def _write_halves(folder: Path, cut: str, graphs: list[bytes]) -> None:
    """Write the score graph's halves and the tensor between them ("" when it has no cut) into a new ``folder``."""
    folder.mkdir(parents=True)
    for name, graph in zip(HALVES, graphs, strict=False):  # no graphs when there is no cut
        (folder / name).write_bytes(graph)
    (folder / CUT_FILE).write_text(cut)


def export_reranker_onnx(model: Any, folder: str | Path, int8: bool = False, weight: float = 0.0, depth: int = 16,
                         name: str = "reranker-lite", extra: dict[str, Any] | None = None) -> Path:
    """Write ``photo.onnx``, ``score.onnx`` (int8 dynamic-quantised when ``int8``) and ``reranker.json``."""
    import torch
    from torch import nn

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    model = model.eval()
    c = model.config

    class Photo(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.model = model

        def forward(self, grid: torch.Tensor) -> torch.Tensor:
            return self.model.photo_tokens(grid)

    class Score(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.model = model

        def forward(self, text_states: torch.Tensor, text_mask: torch.Tensor, photo_tokens: torch.Tensor
                    ) -> torch.Tensor:
            return self.model.score(text_states, text_mask, photo_tokens)

    grid = torch.rand(2, 1280, c["grid"], c["grid"]) * 6
    states, mask = torch.randn(2, 9, 384), torch.ones(2, 9, dtype=torch.long)
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the tracer's notes on shapes fixed at export (batch and length stay dynamic)
        torch.onnx.export(Photo().eval(), (grid,), str(folder / "photo.onnx"), input_names=["grid"],
                          output_names=["tokens"], dynamic_axes={"grid": {0: "n"}, "tokens": {0: "n"}},
                          opset_version=17, dynamo=False)
        tokens = model.photo_tokens(grid)
        score_path = folder / ("score.fp32.onnx" if int8 else "score.onnx")
        torch.onnx.export(Score().eval(), (states, mask, tokens), str(score_path),
                          input_names=["text_states", "text_mask", "photo_tokens"], output_names=["logits"],
                          dynamic_axes={"text_states": {0: "b", 1: "l"}, "text_mask": {0: "b", 1: "l"},
                                        "photo_tokens": {0: "b"}, "logits": {0: "b"}},
                          opset_version=17, dynamo=False)
    if int8:
        from onnxruntime.quantization import QuantType, quantize_dynamic

        quantize_dynamic(str(score_path), str(folder / "score.onnx"), weight_type=QuantType.QInt8)
        score_path.unlink()
    meta = {"name": name, "d": c["d"], "tokens": model.tokens, "config": c, "weight": weight, "depth": depth,
            "int8": int8, "fingerprint": weights_fingerprint(folder),
            "fused": "dual + weight * logit on the dual top-N", **(extra or {})}
    (folder / "reranker.json").write_text(json.dumps(meta, indent=1) + "\n")
    return folder
