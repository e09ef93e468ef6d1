"""Transformers dual encoders (CLIP, SigLIP/SigLIP2, ALIGN, AltCLIP, ChineseCLIP ...) by hub id or folder.

Each model keeps its own tokenizer and image processor; what differs between families (SigLIP was
trained on max-length padded text, ALIGN pads to 64 tokens) is set in TEXT_PADDING.
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from .base import Encoder
from .fingerprint import fingerprint_folder

# model_type -> tokenizer keyword arguments that match how the model was trained.
TEXT_PADDING = {
    "siglip": {"padding": "max_length", "max_length": 64},
    "siglip2": {"padding": "max_length", "max_length": 64},
    "align": {"padding": "max_length", "max_length": 64},
}
# Text towers with RoBERTa-style positions, which start after the padding index.
POSITION_OFFSET = {"altclip": 2}
SUPPORTED = ("clip", "siglip", "siglip2", "align", "altclip", "chinese_clip")


def resolve_folder(name_or_path: str) -> Path:
    """The local folder holding the model: the path itself, or its snapshot in the Hugging Face cache."""
    path = Path(name_or_path).expanduser()
    if path.is_dir():
        return path.resolve()
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(name_or_path, local_files_only=True))
    except Exception as e:  # the hub client raises several error types for "not cached"
        raise FileNotFoundError(
            f"model {name_or_path!r} is neither a local folder nor in the Hugging Face cache, and models are not "
            "downloaded here (offline). Download it where you have network and pass its folder."
        ) from e


def _features(output: torch.Tensor | object) -> torch.Tensor:
    """Transformers 4.x returns a tensor from get_*_features, 5.x a ModelOutput with pooler_output."""
    return output if isinstance(output, torch.Tensor) else output.pooler_output


class HFDualEncoder(Encoder):
    """Any transformers model with ``get_image_features`` and ``get_text_features``."""

    def __init__(self, name_or_path: str, device: str = "cpu", batch_size: int = 32) -> None:
        from transformers import AutoImageProcessor, AutoModel, AutoTokenizer
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()

        folder = resolve_folder(name_or_path)
        self.name = name_or_path if not Path(name_or_path).expanduser().is_dir() else str(folder)
        self.fingerprint = fingerprint_folder(folder)
        self.device = torch.device(device)
        self.batch_size = batch_size
        self.model = AutoModel.from_pretrained(folder).to(self.device).eval()
        model_type = self.model.config.model_type
        if not (hasattr(self.model, "get_image_features") and hasattr(self.model, "get_text_features")):
            raise ValueError(f"{name_or_path}: a {model_type!r} model is not a dual encoder "
                             f"(supported families: {', '.join(SUPPORTED)})")
        self.tokenizer = AutoTokenizer.from_pretrained(folder)
        self.image_processor = AutoImageProcessor.from_pretrained(folder)
        self.text_kwargs = TEXT_PADDING.get(model_type, {"padding": True})
        self.text_kwargs = {"truncation": True, "max_length": self._max_tokens(), **self.text_kwargs}
        accepted = inspect.signature(self.model.get_text_features).parameters
        self._text_inputs = [k for k in ("input_ids", "attention_mask", "token_type_ids", "position_ids")
                             if k in accepted]
        self.dim = int(self._encode_texts(["a"]).shape[-1])

    def _max_tokens(self) -> int:
        """The longest input the text tower takes: its position table (less RoBERTa's offset of 2) or
        the tokenizer's own limit, whichever is smaller."""
        text_config = getattr(self.model.config, "text_config", self.model.config)
        limit = getattr(text_config, "max_position_embeddings", 77) - POSITION_OFFSET.get(
            self.model.config.model_type, 0)
        tokenizer_limit = getattr(self.tokenizer, "model_max_length", limit) or limit
        return int(min(limit, tokenizer_limit, 512))

    @torch.inference_mode()
    def _encode_images(self, images: Sequence[Image.Image]) -> np.ndarray:
        inputs = self.image_processor(images=list(images), return_tensors="pt").to(self.device)
        return _features(self.model.get_image_features(**inputs)).float().cpu().numpy()

    @torch.inference_mode()
    def _encode_texts(self, texts: Sequence[str]) -> np.ndarray:
        tokens = self.tokenizer(list(texts), return_tensors="pt", **self.text_kwargs)
        inputs = {k: v.to(self.device) for k, v in tokens.items() if k in self._text_inputs}
        return _features(self.model.get_text_features(**inputs)).float().cpu().numpy()
