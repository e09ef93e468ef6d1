"""ONNX Runtime backend: an encoder exported to two ONNX graphs (photo tower, text tower).

``export_onnx(encoder, folder)`` writes ``image.onnx``, ``text.onnx``, the preprocessing files
(tokenizer, and for transformers models the image processor) and ``crossmodal-onnx.json``;
``OnnxEncoder(folder)`` runs them. One native call per batch (no Python between layers) is what
makes it fast on a busy CPU. An export keeps the source model's fingerprint, so collections built with
the source model accept its queries: float32 vectors agree to cosine >= 0.999, and ``--int8`` leaves the
photo tower in float32 and quantizes only the text tower, whose vectors retrieve as well as float32 ones
(measured on Flickr8k dev; see docs/benchmarks.md).
"""

from __future__ import annotations

import json
import os
import threading
import warnings
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from ..collection.atomic import atomic_write_json
from .base import Encoder, normalize

CONFIG = "crossmodal-onnx.json"
TEXT_INPUTS = ("input_ids", "attention_mask", "token_type_ids")


class _LiteImage(torch.nn.Module):
    def __init__(self, encoder: Any) -> None:
        super().__init__()
        self.towers, self.head = encoder.towers, encoder.heads.image

    def forward(self, pixels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        grid = self.towers.image_grid(pixels)
        return self.head(grid.mean(dim=(2, 3))), grid


class _LiteText(torch.nn.Module):
    def __init__(self, encoder: Any) -> None:
        super().__init__()
        self.towers, self.head = encoder.towers, encoder.heads.text

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                token_type_ids: torch.Tensor) -> torch.Tensor:
        states = self.towers.text(input_ids=input_ids, attention_mask=attention_mask,
                                  token_type_ids=token_type_ids).last_hidden_state
        return self.head(self.towers.pool_text(states, attention_mask)), states


def export_onnx(encoder: Encoder, folder: str | Path, int8: bool = False) -> Path:
    """Export a ``lite`` or transformers encoder to ONNX in ``folder``; ``int8`` quantizes the text tower."""
    from .hf import HFDualEncoder
    from .lite import LiteEncoder

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    if isinstance(encoder, LiteEncoder):
        towers = _export_lite(encoder, folder)
    elif isinstance(encoder, HFDualEncoder):
        from .onnx_hf import export_transformers

        towers = {"preprocess": "transformers", **export_transformers(encoder, folder)}
    else:
        raise ValueError(f"cannot export a {type(encoder).__name__} to ONNX")
    if int8:
        quantize_text_tower(folder / "text.onnx")
    atomic_write_json(folder / CONFIG, {
        "format": "crossmodal-onnx", "source": encoder.name, "dim": encoder.dim, "int8": int8,
        "fingerprint": encoder.fingerprint, **towers,
    })
    return folder


def _export_lite(encoder: Any, folder: Path) -> dict[str, Any]:
    from .lite import TEXT_MAX_TOKENS

    size = encoder.towers.resolution
    sample = Image.new("RGB", (size, size), (120, 80, 40))
    tokens = encoder.towers.tokenize(["a photo of a dog", "two people"])
    _export(_LiteImage(encoder).eval(), (encoder.towers.pixels([sample, sample]),), {"pixel_values": {0: "batch"}},
            folder / "image.onnx", {"grid": {0: "batch"}})
    fold_pads_into_convs(folder / "image.onnx")
    _export(_LiteText(encoder).eval(), tuple(tokens[name] for name in TEXT_INPUTS),
            {name: {0: "batch", 1: "tokens"} for name in TEXT_INPUTS}, folder / "text.onnx",
            {"states": {0: "batch", 1: "tokens"}})
    encoder.towers.tokenizer.save_pretrained(folder)
    return {"preprocess": "lite", "rerank_inputs": True, "image": {"inputs": ["pixel_values"], "resolution": size},
            "text": {"inputs": list(TEXT_INPUTS),
                     "kwargs": {"padding": True, "truncation": True, "max_length": TEXT_MAX_TOKENS}}}


def _export(module: torch.nn.Module, args: tuple, dynamic: dict[str, dict[int, str]], path: Path,
            extra_outputs: dict[str, dict[int, str]] | None = None) -> None:
    """Export with inputs ``dynamic``, the output ``embedding`` and any ``extra_outputs`` (their dynamic axes)."""
    extra_outputs = extra_outputs or {}
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tracer notes about shapes fixed at export time (batch stays dynamic)
        torch.onnx.export(module, args, str(path), input_names=list(dynamic),
                          output_names=["embedding", *extra_outputs],
                          dynamic_axes={**dynamic, "embedding": {0: "batch"}, **extra_outputs}, opset_version=17,
                          dynamo=False)


def fold_pads_into_convs(path: Path) -> int:
    """Constant-fold the graph, then merge each zero ``Pad`` into the ``Conv`` it feeds; returns how many.

    TF "same" padding is asymmetric, which PyTorch's conv cannot express but ONNX's ``pads`` can. A
    separate ``Pad`` breaks ONNX Runtime's blocked-layout convolution chain (measured: 1.4x slower).
    Only ONNX Runtime's basic (portable, standard-ops) optimizations are applied to the saved graph.
    """
    import onnx
    import onnxruntime as ort
    from onnx import helper, numpy_helper

    folded = path.with_suffix(".folded.onnx")
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    options.log_severity_level = 3  # not the notes about initializers that folding made unused
    options.optimized_model_filepath = str(folded)
    ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    model = onnx.load(str(folded))
    constants = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    users: dict[str, list[Any]] = defaultdict(list)
    for node in model.graph.node:
        for name in node.input:
            users[name].append(node)
    merged = []
    for pad in (n for n in model.graph.node if n.op_type == "Pad"):
        pads = constants.get(pad.input[1]) if len(pad.input) > 1 else None
        value = constants.get(pad.input[2], 0) if len(pad.input) > 2 and pad.input[2] else 0
        mode = next((a.s for a in pad.attribute if a.name == "mode"), b"constant")
        if pads is None or mode != b"constant" or np.any(value) or len(users[pad.output[0]]) != 1:
            continue
        conv, half = users[pad.output[0]][0], len(pads) // 2
        if conv.op_type != "Conv" or pads[:2].any() or pads[half:half + 2].any():
            continue
        old = next((list(a.ints) for a in conv.attribute if a.name == "pads"), [0] * (2 * (half - 2)))
        new = [int(p) + o for p, o in zip([*pads[2:half], *pads[half + 2:]], old, strict=True)]
        for attribute in [a for a in conv.attribute if a.name in ("pads", "auto_pad")]:
            conv.attribute.remove(attribute)
        conv.attribute.append(helper.make_attribute("pads", new))
        conv.input[0] = pad.input[0]
        merged.append(pad)
    for pad in merged:
        model.graph.node.remove(pad)
    used = {name for node in model.graph.node for name in node.input}
    for unused in [t for t in model.graph.initializer if t.name not in used]:
        model.graph.initializer.remove(unused)
    onnx.save(model, str(path))
    folded.unlink()
    return len(merged)


def quantize_text_tower(path: Path) -> None:
    """Dynamic int8 quantization of the text tower's matrix products, in place.

    Per-channel weights with a 7-bit range: CPUs without VNNI (AVX2) saturate 8-bit products, which cost
    30 dev RSUM points with per-tensor 8-bit weights. The feed-forward down-projections (weights wider in
    than out) stay float32: their post-GELU inputs have outliers that a per-batch 8-bit activation scale
    clips (quantizing them too cost 1.4 dev RSUM points instead of 0.8). The photo tower stays float32: on
    AVX2, static int8 EfficientNet-Lite0 ran only 1.1-1.3x faster and cost 6 RSUM points, and dynamic int8
    convolutions were 4x slower. Figures: docs/benchmarks.md.
    """
    import onnx
    from onnx import numpy_helper
    from onnxruntime.quantization import QuantType, quantize_dynamic

    model = onnx.load(str(path), load_external_data=False)
    shapes = {t.name: tuple(t.dims) for t in model.graph.initializer}
    shapes |= {n.output[0]: tuple(numpy_helper.to_array(a.t).shape) for n in model.graph.node
               if n.op_type == "Constant" for a in n.attribute if a.name == "value"}
    down = [n.name for n in model.graph.node if n.op_type == "MatMul" and len(shapes.get(n.input[1], ())) == 2
            and shapes[n.input[1]][0] > shapes[n.input[1]][1]]
    tmp = path.with_suffix(".int8.onnx")
    quantize_dynamic(str(path), str(tmp), weight_type=QuantType.QInt8, per_channel=True, reduce_range=True,
                     op_types_to_quantize=["MatMul"], nodes_to_exclude=down)
    tmp.replace(path)


def _session(path: Path, threads: int) -> Any:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    # Idle worker threads sleep instead of spinning, so decoding threads and the server keep their cores.
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


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
        self.use_threads(threads or cores)
        if self.config.get("preprocess", "lite") == "transformers":
            from .onnx_hf import TransformersInputs

            self.inputs: Any = TransformersInputs(folder, self.config)
        else:
            self.inputs = _LiteInputs(folder, self.config)

    def use_threads(self, threads: int) -> None:
        """(Re)open both sessions with ``threads`` threads each. One thread suits callers that run several
        batches at once (the server's workers): each call then runs on its caller's core, with no hand-offs."""
        self.image_session = _session(self.folder / "image.onnx", threads)
        self.text_session = _session(self.folder / "text.onnx", threads)

    def prepare_image(self, image: Image.Image) -> Any:
        return self.inputs.prepare_image(image)

    def _encode_images(self, images: Sequence[Any]) -> np.ndarray:
        return self.image_session.run(["embedding"], self.inputs.images(images))[0]

    def encode_prepared_grids(self, prepared: Sequence[Any]) -> tuple[np.ndarray, np.ndarray]:
        if not self.rerank_inputs:
            return super().encode_prepared_grids(prepared)
        vectors, grid = self.image_session.run(["embedding", "grid"], self.inputs.images(prepared))
        return normalize(vectors), grid

    def token_states(self, texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        if not self.rerank_inputs:
            return super().token_states(texts)
        (states,), mask = self._run_texts(texts, ["states"])
        return states, mask

    def _encode_texts(self, texts: Sequence[str]) -> np.ndarray:
        return self._run_texts(texts, ["embedding"])[0][0]

    def encode_texts_with_states(self, texts: Sequence[str]) -> tuple[np.ndarray, list[tuple[np.ndarray, np.ndarray]]]:
        """As the base class, from one model call: a query's vector and what the reranker reads of it cost one
        pass of the text tower."""
        if not self.rerank_inputs or not texts:
            return super().encode_texts_with_states(texts)
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
        from transformers import AutoTokenizer

        self.config = config
        self.tokenizer = AutoTokenizer.from_pretrained(folder)
        self._tokenizing = threading.Lock()  # a fast tokenizer's settings are shared state ("Already borrowed")

    def texts(self, texts: Sequence[str]) -> dict[str, np.ndarray]:
        with self._tokenizing:
            tokens = self.tokenizer(list(texts), return_tensors="np", **self.config["text"]["kwargs"])
        return {name: np.asarray(tokens[name], dtype=np.int64) for name in self.config["text"]["inputs"]}


class _LiteInputs(TextInputs):
    """ONNX feeds for an exported ``lite``: lite's own photo preprocessing and the MiniLM tokenizer."""

    def prepare_image(self, image: Image.Image) -> np.ndarray:
        from .lite import preprocess_image

        return preprocess_image(image, self.config["image"]["resolution"]).numpy()

    def images(self, prepared: Sequence[np.ndarray]) -> dict[str, np.ndarray]:
        return {"pixel_values": np.stack(prepared)}
