"""ONNX export of an encoder's photo and text towers (PyTorch), for the ONNX Runtime backend in onnx.py.

``export_onnx(encoder, folder)`` writes ``image.onnx``, ``text.onnx``, the preprocessing files (tokenizer,
including its tokenizer.json, and for transformers models the image processor) and ``crossmodal-onnx.json``.
Lite's photo graph has its padding folded into its convolutions; ``int8`` quantizes the text tower only (lite's
with its matrix products' inputs smoothed first: encoders/onnx_smooth.py).
"""

from __future__ import annotations

import logging
import os
import re
import warnings
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from ..collection.atomic import atomic_write_json
from .base import Encoder
from .onnx import CONFIG

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
    if int8 and isinstance(encoder, LiteEncoder):
        from .onnx_smooth import smooth_activations

        # smoothed, the later half's down-projections go to int8 too: Flickr8k dev RSUM 339.26 against 337.78 with
        # all six float32 and 338.76 all float32, every caption's vector closer to float32's, 7-15% faster; all six
        # in int8: 29% faster but one caption in 5,000 at cosine 0.968 (docs/benchmarks.md)
        smooth_activations(folder / "text.onnx", _lite_calibration(encoder))
        quantize_text_tower(folder / "text.onnx", down_from_layer=encoder.towers.text.config.num_hidden_layers // 2)
    elif int8:
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


def _lite_calibration(encoder: Any) -> list[dict[str, np.ndarray]]:
    """The text graph's feeds for each calibration text alone (unpadded), for smoothing."""
    from .onnx_smooth import CALIBRATION

    feeds = []
    for text in CALIBRATION:
        tokens = encoder.towers.tokenize([text])
        feeds.append({name: np.asarray(tokens[name], dtype=np.int64) for name in TEXT_INPUTS})
    return feeds


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


def quantize_text_tower(path: Path, fused: bool = False, down_from_layer: int | None = None) -> None:
    """Dynamic int8 quantization of the text tower's matrix products, in place.

    Per-channel weights with a 7-bit range: CPUs without VNNI (AVX2) saturate 8-bit products, which cost
    30 dev RSUM points with per-tensor 8-bit weights. The feed-forward down-projections (weights wider in
    than out) stay float32: their post-GELU inputs have outliers that a per-batch 8-bit activation scale
    clips (quantizing them too cost 1.4 dev RSUM points instead of 0.8). The photo tower stays float32: on
    AVX2, static int8 EfficientNet-Lite0 ran only 1.1-1.3x faster and cost 6 RSUM points, and dynamic int8
    convolutions were 4x slower. Figures: docs/benchmarks.md. ``fused``: the graph holds ONNX Runtime's fused
    Attention nodes (``onnxruntime.transformers.optimizer``), quantized too. ``down_from_layer``: quantize the
    down-projections of the layers from this one on (their error crosses fewer layers before the output).
    """
    import onnx
    from onnx import numpy_helper
    from onnxruntime.quantization import QuantType, quantize_dynamic

    model = onnx.load(str(path), load_external_data=False)
    shapes = {t.name: tuple(t.dims) for t in model.graph.initializer}
    shapes |= {n.output[0]: tuple(numpy_helper.to_array(a.t).shape) for n in model.graph.node
               if n.op_type == "Constant" for a in n.attribute if a.name == "value"}
    keep_float = [n.name for n in model.graph.node if n.op_type == "MatMul" and len(shapes.get(n.input[1], ())) == 2
                  and shapes[n.input[1]][0] > shapes[n.input[1]][1]]
    if down_from_layer is not None:
        keep_float = [name for name in keep_float if _layer(name) < down_from_layer]
    tmp = path.with_suffix(".int8.onnx")
    root, quiet = logging.getLogger(), _QuantizerAdvice()
    root.addFilter(quiet)  # its advice on static quantization, printed on a user's first query otherwise
    try:
        quantize_dynamic(str(path), str(tmp), weight_type=QuantType.QInt8, per_channel=True, reduce_range=True,
                         op_types_to_quantize=["MatMul", "Attention"] if fused else ["MatMul"],
                         nodes_to_exclude=keep_float,
                         extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT} if fused else {})
    finally:
        root.removeFilter(quiet)
    tmp.replace(path)


class _QuantizerAdvice(logging.Filter):
    """Drops what ONNX Runtime's quantizer logs on the root logger and nothing else: ``logging.disable`` would also
    silence every other thread of a server while a tower is exported."""

    def filter(self, record: logging.LogRecord) -> bool:
        return f"onnxruntime{os.sep}quantization{os.sep}" not in record.pathname


def _layer(node: str) -> int:
    """The encoder layer a node of an exported BERT graph belongs to (``.../layer.3/output/dense/MatMul``)."""
    found = re.search(r"layer\.(\d+)/", node)
    if found is None:
        raise ValueError(f"{node}: not a node of a numbered encoder layer")
    return int(found.group(1))
