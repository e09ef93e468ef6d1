"""ONNX export of transformers dual encoders (CLIP, SigLIP, SigLIP2, ALIGN, AltCLIP, ChineseCLIP): two graphs
whose one output "embedding" is the un-normalised ``get_image_features`` / ``get_text_features`` vector.

It uses the torch.export-based exporter (``dynamo=True``) with a symbolic batch (and token length, unless the
family pads to max_length): shapes stay symbolic or the export fails, where the TorchScript exporter can silently
record Python-level shape values as constants (reported for CLIP's end-of-text pooling
``last_hidden_state[arange(batch), eos]``: the example's batch size baked in, wrong vectors at other sizes).
SigLIP2's naflex inputs (pixel_values, pixel_attention_mask, spatial_shapes) export as they are: the patch count
is fixed by the processor's max_num_patches and position embeddings are resized inside the graph.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from PIL import Image

from .hf import _features
from .onnx import TextInputs

if TYPE_CHECKING:
    from .hf import HFDualEncoder

OUTPUT = "embedding"
# Example inputs: two of each, so torch.export does not specialise the batch (or token) dimension to 1.
_EXAMPLE_TEXTS = ["a photo of a dog on the grass", "two people"]


class _Tower(torch.nn.Module):
    """One tower as a module taking its inputs positionally, returning the projected features tensor."""

    def __init__(self, model: torch.nn.Module, method: str, names: Sequence[str]) -> None:
        super().__init__()
        self.model, self.method, self.names = model, method, list(names)

    def forward(self, *tensors: torch.Tensor) -> torch.Tensor:
        return _features(getattr(self.model, self.method)(**dict(zip(self.names, tensors, strict=True))))


def export_transformers(encoder: HFDualEncoder, folder: Path) -> dict[str, Any]:
    """Write image.onnx and text.onnx for a transformers dual encoder (plus its tokenizer and image processor
    via save_pretrained) into folder; return the config entries
    {"image": {"inputs": [...]}, "text": {"inputs": [...], "kwargs": {...}}}."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    model = encoder.model.eval()
    batch = torch.export.Dim("batch")

    photos = [Image.new("RGB", (64, 48), (120, 80, 40)), Image.new("RGB", (48, 64), (30, 90, 200))]
    arrays = encoder.image_processor(images=photos, return_tensors="np")
    image_inputs = list(arrays.keys())
    pixels = [torch.from_numpy(_onnx_dtype(np.asarray(arrays[k]))).to(encoder.device) for k in image_inputs]
    _export(_Tower(model, "get_image_features", image_inputs), pixels,
            [{0: batch}] * len(image_inputs), image_inputs, folder / "image.onnx")

    kwargs = dict(encoder.text_kwargs)
    tokens = encoder.tokenizer(_EXAMPLE_TEXTS, return_tensors="pt", **kwargs).to(encoder.device)
    text_inputs = [k for k in encoder._text_inputs if k in tokens]
    # Families padded to max_length keep a fixed token length; the others take any length up to max_length.
    length = {} if kwargs.get("padding") == "max_length" else {1: torch.export.Dim("tokens", max=kwargs["max_length"])}
    _export(_Tower(model, "get_text_features", text_inputs), [tokens[k] for k in text_inputs],
            [{0: batch, **length}] * len(text_inputs), text_inputs, folder / "text.onnx")

    encoder.tokenizer.save_pretrained(folder)
    encoder.image_processor.save_pretrained(folder)
    return {"image": {"inputs": image_inputs}, "text": {"inputs": text_inputs, "kwargs": kwargs}}


def _export(module: torch.nn.Module, args: list[torch.Tensor], dims: list[dict[int, Any]], names: list[str],
            path: Path) -> None:
    """Export module with torch.export and name its one output "embedding" (renaming any constant that
    the exporter happened to call "embedding", e.g. a folded position-embedding lookup)."""
    with torch.no_grad(), warnings.catch_warnings():
        # Inputs share the one "batch" (and "tokens") dimension, which the exporter reports once per extra input.
        warnings.filterwarnings("ignore", message="# The axis name")
        program = torch.onnx.export(module.eval(), tuple(args), input_names=names, dynamic_shapes=(tuple(dims),),
                                    dynamo=True, optimize=True, verbose=False,
                                    custom_translation_table={torch.ops.aten._is_all_true.default: _is_all_true})
    graph = program.model.graph
    output = graph.outputs[0]
    clashing = [v for v in graph.initializers.values() if v.name == OUTPUT and v is not output]
    clashing += [v for node in graph for v in node.outputs if v.name == OUTPUT and v is not output]
    for i, value in enumerate(clashing):
        value.name = f"{OUTPUT}_{i}_renamed"
    output.name = OUTPUT
    program.save(str(path))


def _is_all_true(x: Any) -> Any:
    """ONNX for torch's input checks (SigLIP2 checks spatial_shapes), which the exporter has no translation for."""
    from onnx import TensorProto
    from onnxscript import opset18 as op

    return op.Cast(op.ReduceMin(op.Cast(x, to=TensorProto.INT64), keepdims=0), to=TensorProto.BOOL)


class TransformersInputs(TextInputs):
    """Builds the ONNX feeds for an exported transformers model from the files export_transformers saved."""

    def __init__(self, folder: Path, config: dict[str, Any]) -> None:
        from transformers import AutoImageProcessor

        super().__init__(folder, config)
        self.image_processor = AutoImageProcessor.from_pretrained(folder)

    def prepare_image(self, image: Image.Image) -> Image.Image:
        """The photo itself: the image processor works on whole batches (SigLIP2 pads patches per batch)."""
        return image

    def images(self, images: Sequence[Image.Image]) -> dict[str, np.ndarray]:
        """The image graph's feeds: the saved image processor's arrays, float32 pixels and int64 indices."""
        arrays = self.image_processor(images=list(images), return_tensors="np")
        return {k: _onnx_dtype(np.asarray(arrays[k])) for k in self.config["image"]["inputs"]}


def _onnx_dtype(array: np.ndarray) -> np.ndarray:
    """Float arrays as float32 and integer/boolean ones as int64, the dtypes the graphs were exported with."""
    return array.astype(np.float32 if np.issubdtype(array.dtype, np.floating) else np.int64)
